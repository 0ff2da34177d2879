"""Tests for jaxlab.core.writer: JSONL round trip, TensorBoard events, hparams, no-op mode."""

import ast
import glob
import json
import logging
import math
import os
import pathlib
import struct
import subprocess
import sys

import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from tensorboardX.proto import event_pb2

from jaxlab.core import writer as writer_lib


def _read_events(workdir):
    """(step, tag, value-proto) of every summary value in workdir/tb, parsed from TFRecords."""
    paths = glob.glob(os.path.join(workdir, "tb", "events.out.tfevents.*"))
    assert paths, f"no event file under {workdir}/tb"
    found = []
    for path in paths:
        with open(path, "rb") as f:
            data = f.read()
        offset = 0
        while offset < len(data):
            (length,) = struct.unpack("<Q", data[offset : offset + 8])
            payload = data[offset + 12 : offset + 12 + length]  # Skip length and its CRC.
            offset += 12 + length + 4  # Skip the payload CRC.
            event = event_pb2.Event.FromString(payload)
            found += [(event.step, v.tag, v) for v in event.summary.value]
    return found


def test_scalars_round_trip(tmp_path, caplog):
    workdir = str(tmp_path / "run")
    caplog.set_level(logging.INFO)
    with writer_lib.MetricWriter(workdir, enabled=True) as writer:
        writer.write_scalars(1, {"loss": jnp.float32(0.5), "lr": np.float64(1e-3), "count": 3})
        writer.write_scalars(
            2, {"loss": jnp.array(float("nan")), "grad_norm": np.inf, "low": -float("inf")}
        )

    # Strict JSON: no NaN/Infinity tokens.
    def reject(token):
        raise AssertionError(f"non-strict JSON token {token}")

    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        lines = [json.loads(line, parse_constant=reject) for line in f]
    assert len(lines) == 2

    records = writer_lib.read_metrics(workdir)
    assert records[0] == {"step": 1, "loss": 0.5, "lr": pytest.approx(1e-3), "count": 3.0}
    assert records[1]["step"] == 2
    assert math.isnan(records[1]["loss"])
    assert records[1]["grad_norm"] == math.inf
    assert records[1]["low"] == -math.inf
    assert "step 1 | loss 0.5000 | lr 1.00e-03 | count 3.0000" in caplog.text


def test_tensorboard_scalars_images_and_hparams(tmp_path):
    workdir = str(tmp_path)
    config = ml_collections.ConfigDict(
        {"seed": 0, "model": {"dim": 64, "sizes": (1, 2)}, "optim": {"lr": 1e-3, "name": "adamw"}}
    )
    with writer_lib.MetricWriter(workdir, enabled=True) as writer:
        writer.write_hparams(config)
        writer.write_scalars(7, {"loss": 0.25})
        writer.write_images(
            7,
            {
                "gray": np.linspace(0.0, 1.0, 12).reshape(3, 4),
                "rgb": np.zeros((3, 4, 3), np.uint8),
                "batch": np.ones((2, 3, 4, 1), np.float32),
            },
        )
        with pytest.raises(ValueError, match="'bad'.*HW, HWC or NHWC"):
            writer.write_images(7, {"bad": np.zeros(3)})
        writer.flush()

        events = _read_events(workdir)
        scalars = {
            (step, tag): v.simple_value for step, tag, v in events if v.HasField("simple_value")
        }
        assert scalars == {(7, "loss"): 0.25}
        images = {tag for step, tag, v in events if v.HasField("image") and step == 7}
        assert images == {"gray", "rgb", "batch"}
        # The config as text; the HParams entry waits for the metrics (one per run in TB).
        assert "config/text_summary" in {tag for _, tag, _ in events}
        assert "_hparams_/session_start_info" not in {tag for _, tag, _ in events}

    with open(os.path.join(workdir, "hparams.json")) as f:
        assert json.load(f) == {
            "seed": 0,
            "model.dim": 64,
            "model.sizes": "(1, 2)",
            "optim.lr": 1e-3,
            "optim.name": "adamw",
        }


def test_figure_to_image_renders_pixels_at_figure_size_and_closes_it():
    import matplotlib.pyplot as plt
    from matplotlib.figure import Figure

    fig, ax = plt.subplots(figsize=(3, 2), dpi=50)
    fig.patch.set_facecolor((1.0, 0.0, 0.0))
    ax.set_position([0.5, 0.0, 0.5, 1.0])  # the right half: the axes, blue
    ax.set_facecolor((0.0, 0.0, 1.0))
    ax.set(xticks=[], yticks=[])
    image = writer_lib.figure_to_image(fig)
    assert image.shape == (100, 150, 3) and image.dtype == np.uint8
    assert np.array_equal(image[50, 10], [255, 0, 0])  # the figure's background
    assert np.array_equal(image[50, 120], [0, 0, 255])  # inside the axes
    assert fig.number not in plt.get_fignums()
    # A figure made without pyplot (no canvas manager) renders too.
    plain = Figure(figsize=(1, 1), dpi=20)
    assert writer_lib.figure_to_image(plain).shape == (20, 20, 3)


def test_disabled_writer_creates_nothing(tmp_path):
    workdir = tmp_path / "run"
    writer = writer_lib.MetricWriter(str(workdir), enabled=False)
    writer.write_scalars(1, {"loss": 1.0})
    writer.write_images(1, {"x": np.zeros((2, 2))})
    writer.write_hparams({"a": {"b": 1}})
    writer.flush()
    writer.close()
    assert not workdir.exists()


def test_appends_across_writers(tmp_path):
    for step in (1, 2):
        with writer_lib.MetricWriter(str(tmp_path), enabled=True) as writer:
            writer.write_scalars(step, {"loss": float(step)})
    assert [r["step"] for r in writer_lib.read_metrics(str(tmp_path))] == [1, 2]


def test_non_scalar_value_raises(tmp_path):
    with (
        writer_lib.MetricWriter(str(tmp_path), enabled=True) as writer,
        pytest.raises(ValueError, match=r"'loss' has shape \(2,\)"),
    ):
        writer.write_scalars(1, {"loss": np.zeros(2)})


def test_corrupt_line_error_names_file_and_line(tmp_path):
    with writer_lib.MetricWriter(str(tmp_path), enabled=True) as writer:
        writer.write_scalars(1, {"loss": 1.0})
    with open(tmp_path / "metrics.jsonl", "a") as f:
        f.write('{"step": 2, "loss": \n')
    with pytest.raises(ValueError, match=r"metrics\.jsonl, line 2"):
        writer_lib.read_metrics(str(tmp_path))


def test_package_needs_neither_tensorflow_nor_torch():
    """No jaxlab module imports either, and the package works where neither can be imported.

    (tensorboardX imports torch by itself when torch happens to be installed, e.g. in a
    benchmark environment, so "torch is not in sys.modules" is not the property to test.)
    """
    package = pathlib.Path(writer_lib.__file__).resolve().parents[1]
    for path in package.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            bad = [n for n in names if n.split(".")[0] in ("tensorflow", "torch")]
            assert not bad, f"{path} imports {bad}"
    code = (
        "import sys\n"
        "sys.modules['torch'] = sys.modules['tensorflow'] = None  # import raises ImportError\n"
        "import jaxlab.core.writer, jaxlab.cli.commands, jaxlab.core.bundle\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_read_metrics_skips_a_line_still_being_written(tmp_path):
    with open(tmp_path / "metrics.jsonl", "w") as f:
        f.write('{"step": 1, "loss": 0.5}\n{"step": 2, "lo')
    assert writer_lib.read_metrics(str(tmp_path)) == [{"step": 1, "loss": 0.5}]
    with open(tmp_path / "metrics.jsonl", "w") as f:
        f.write('{"step": 1, "lo\n{"step": 2}\n')
    with pytest.raises(ValueError, match="line 1"):
        writer_lib.read_metrics(str(tmp_path))


def test_hparams_with_metrics_read_back_by_tensorboard(tmp_path):
    """What TensorBoard's HParams tab reads: the experiment names the metric tags, the session
    holds the hparam values, and each metric's value is a scalar under its tag at `step`."""
    from tensorboard.backend.event_processing import event_accumulator
    from tensorboard.plugins.hparams import plugin_data_pb2

    config = ml_collections.ConfigDict({"model": {"dim": 64, "dtype": "float32"}, "seed": 3})
    with writer_lib.MetricWriter(str(tmp_path), enabled=True) as writer:
        writer.write_scalars(5, {"loss": 2.0})
        writer.write_hparams_with_metrics(
            config, {"final/acc": np.float32(0.75), "final/loss": jnp.array(0.5)}, step=9
        )
        writer.write_text(9, {"run_info": "**sha** abc"})

    accumulator = event_accumulator.EventAccumulator(str(tmp_path / "tb"))
    accumulator.Reload()
    assert [(e.step, e.value) for e in accumulator.Scalars("final/acc")] == [(9, 0.75)]
    assert [(e.step, e.value) for e in accumulator.Scalars("final/loss")] == [(9, 0.5)]
    assert [(e.step, e.value) for e in accumulator.Scalars("loss")] == [(5, 2.0)]
    content = accumulator.PluginTagToContent("hparams")
    experiment = plugin_data_pb2.HParamsPluginData.FromString(
        content["_hparams_/experiment"]
    ).experiment
    assert sorted(m.name.tag for m in experiment.metric_infos) == ["final/acc", "final/loss"]
    assert {h.name for h in experiment.hparam_infos} == {"model.dim", "model.dtype", "seed"}
    session = plugin_data_pb2.HParamsPluginData.FromString(
        content["_hparams_/session_start_info"]
    ).session_start_info
    assert session.hparams["model.dim"].number_value == 64
    assert session.hparams["model.dtype"].string_value == "float32"
    (text,) = accumulator.Tensors("run_info/text_summary")
    assert text.tensor_proto.string_val == [b"**sha** abc"]
    # metrics.jsonl holds only what write_scalars wrote.
    assert writer_lib.read_metrics(str(tmp_path)) == [{"step": 5, "loss": 2.0}]


def test_metric_names_are_tensorboard_tags_as_they_are(tmp_path):
    """TensorBoard renames characters outside letters, digits and _ . - / (issue 28: the
    weather Brier keys `brier/refc>=35` became `brier/refc__35`): legal names read back
    unchanged, others are an error before anything is written."""
    from tensorboard.backend.event_processing import event_accumulator

    from jaxlab.weather.metrics import event_key

    assert [event_key("refc", 35), event_key("cin", -50.0), event_key("q", 1e6)] == [
        "refc_ge_35",
        "cin_ge_-50",
        "q_ge_1e06",
    ]
    names = {f"brier/{event_key('refc', 35)}": 0.1, "crps/t2m/lead1": 0.3, "rate_1.5-x": 2.0}
    workdir = str(tmp_path)
    with writer_lib.MetricWriter(workdir, enabled=True) as writer:
        writer.write_scalars(3, names)
        writer.write_summary_scalars(3, {f"evaluate/eval/{k}": v for k, v in names.items()})
        with pytest.raises(ValueError) as error:
            writer.write_scalars(4, {"loss": 1.0, "brier/refc>=35": 0.1})
        with pytest.raises(ValueError, match="'/loss' is not a legal TensorBoard tag"):
            writer.write_summary_scalars(4, {"/loss": 1.0})
    assert str(error.value) == (
        "Metric name 'brier/refc>=35' is not a legal TensorBoard tag (TensorBoard would show it "
        "as 'brier/refc__35'); use only letters, digits and _ . - / so metrics.json and "
        "TensorBoard name it alike."
    )
    accumulator = event_accumulator.EventAccumulator(os.path.join(workdir, "tb"))
    accumulator.Reload()
    tags = set(accumulator.Tags()["scalars"])
    assert tags == set(names) | {f"evaluate/eval/{k}" for k in names}
    assert writer_lib.read_metrics(workdir) == [{"step": 3, **names}]  # nothing of step 4
