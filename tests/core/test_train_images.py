"""The figures the train loops write to TensorBoard at each evaluation (`eval/<name>`).

The example task trains in-process and its event file is read back with TensorBoard's own
reader; the other tasks' figure functions are drawn from small synthetic inputs (their loops'
training runs are the tasks' slow tests).
"""

import io

import matplotlib.pyplot as plt
import numpy as np
import pytest
from PIL import Image
from tensorboard.backend.event_processing import event_accumulator

from jaxlab.configs import example as example_config
from jaxlab.core.writer import TB_DIR, figure_to_image
from jaxlab.example import train as example_train
from jaxlab.glitch import plots as glitch_plots
from jaxlab.neutrino import plots as neutrino_plots
from jaxlab.sales import train as sales_train
from jaxlab.vegetation import plots as vegetation_plots
from jaxlab.weather import plots as weather_plots

MAX_HEIGHT, MAX_WIDTH = 400, 600


def _check_image(image: np.ndarray) -> None:
    """An RGB uint8 image within the size limit with more than a blank background."""
    assert image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3, image.shape
    assert image.shape[0] <= MAX_HEIGHT and image.shape[1] <= MAX_WIDTH, image.shape
    colours = np.unique(image.reshape(-1, 3), axis=0)
    assert len(colours) > 10, f"only {len(colours)} colours: blank image"


def test_example_training_writes_prediction_scatter_at_each_eval(tmp_path):
    config = example_config.get_config("tiny")  # 20 steps, evaluations at 10 and 20
    workdir = str(tmp_path)
    example_train.train_and_evaluate(config, workdir)

    acc = event_accumulator.EventAccumulator(
        str(tmp_path / TB_DIR), size_guidance={event_accumulator.IMAGES: 0}
    )
    acc.Reload()
    assert "eval/predictions" in acc.Tags()["images"]
    events = acc.Images("eval/predictions")
    assert [e.step for e in events] == [10, 20]
    images = [
        np.asarray(Image.open(io.BytesIO(e.encoded_image_string)).convert("RGB")) for e in events
    ]
    for event, image in zip(events, images, strict=True):
        assert (event.height, event.width) == image.shape[:2]
        _check_image(image)
    # The figure follows the model: ten more steps move the points (and the title's MSE).
    assert images[0].shape == images[1].shape and not np.array_equal(images[0], images[1])


def test_glitch_confusion_matrix_image():
    classes = ["Blip", "Koi_Fish", "Whistle", "Scattered_Light"]
    perfect = np.diag([5, 7, 3, 9])
    confused = np.full((4, 4), 6)
    fig = glitch_plots.confusion_matrix_figure(perfect, classes, "val", figsize=(6, 4), dpi=100)
    image = figure_to_image(fig)
    assert image.shape == (400, 600, 3)
    _check_image(image)
    other = figure_to_image(
        glitch_plots.confusion_matrix_figure(confused, classes, "val", figsize=(6, 4), dpi=100)
    )
    assert not np.array_equal(image, other)


def test_vegetation_ndvi_strip_image():
    gen = np.random.default_rng(0)
    truth = gen.uniform(0.1, 0.9, (4, 8, 8)).astype(np.float32)
    truth[1, :3] = np.nan  # cloudy pixels of the target
    pred = truth + gen.normal(0, 0.1, truth.shape).astype(np.float32)
    image = figure_to_image(vegetation_plots.ndvi_strip(truth, pred, [5, 35, 70, 100], "val"))
    _check_image(image)
    other = figure_to_image(vegetation_plots.ndvi_strip(truth, truth, [5, 35, 70, 100], "val"))
    assert image.shape == other.shape and not np.array_equal(image, other)


def test_sales_generated_image_uses_the_same_spread_windows():
    gen = np.random.default_rng(0)
    history, horizon, n = 14, 7, 9
    source = [
        {"history_sales": gen.uniform(0, 1, history), "target": gen.uniform(0, 1, horizon)}
        for _ in range(n)
    ]
    generated = gen.uniform(0, 1, (n, horizon))
    image = sales_train.generated_image(source, generated, step=5)
    _check_image(image)
    # Windows between the four picked ones (0, 3, 5, 8 of 9) do not enter the figure.
    unused = generated.copy()
    unused[[1, 2, 4, 6, 7]] = 0.0
    assert np.array_equal(image, sales_train.generated_image(source, unused, step=5))
    picked = generated.copy()
    picked[3] = 0.0
    assert not np.array_equal(image, sales_train.generated_image(source, picked, step=5))


def test_neutrino_zenith_histogram_image():
    gen = np.random.default_rng(0)
    zen_true = np.arccos(gen.uniform(-1, 1, 500))
    zen_pred = np.clip(zen_true + gen.normal(0, 0.2, 500), 0, np.pi)
    image = figure_to_image(neutrino_plots.zenith_figure(zen_true, zen_pred, "eval"))
    assert image.shape == (400, 400, 3)
    _check_image(image)
    constant = figure_to_image(neutrino_plots.zenith_figure(zen_true, np.full(500, 1.5), "eval"))
    assert not np.array_equal(image, constant)


def test_weather_members_image():
    gen = np.random.default_rng(0)
    truth, members = gen.normal(size=(16, 24)), gen.normal(size=(3, 16, 24))
    image = figure_to_image(weather_plots.members_figure(truth, members, "refc", "+1 h, step 5"))
    assert image.shape[2] == 3 and image.shape[0] <= 400 and image.shape[1] <= 600
    _check_image(image)
    moved = figure_to_image(weather_plots.members_figure(truth, members[::-1], "refc", "+1 h"))
    assert not np.array_equal(image, moved)


@pytest.fixture(autouse=True)
def _no_open_figures():
    """Every figure drawn for an image is closed (a loop evaluating often would leak them)."""
    before = set(plt.get_fignums())
    yield
    assert set(plt.get_fignums()) == before
