"""Glitch predict on unlabelled inputs in the public formats, from a tiny trained model.

The outputs are read back with pandas / PIL (not the project's readers) and checked against an
independent pass: `evaluate` on the labelled test split of the same model.
"""

import os
import shutil

import jax
import numpy as np
import pandas as pd
import pytest
from PIL import Image

from jaxlab.configs import glitch as glitch_config
from jaxlab.core import bundle as bundle_lib
from jaxlab.glitch import data, evaluate, predict, train

pytestmark = pytest.mark.slow  # trains (2 steps), exports, evaluates and predicts


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    workdir = str(tmp_path_factory.mktemp("glitch_run"))
    config = glitch_config.get_config("tiny")
    config.train.num_steps = 2
    train.train_and_evaluate(config, workdir)
    bundle = bundle_lib.export_bundle(config, workdir, os.path.join(workdir, "bundle"))
    return config, workdir, bundle


def _read(out):
    return pd.read_csv(os.path.join(out, predict.PREDICTIONS_FILE), dtype={"id": str})


def test_unlabelled_h5_matches_evaluate_and_bundle_equals_checkpoint(trained, tmp_path):
    config, workdir, bundle = trained
    inputs = predict.demo_input(config, workdir)
    from_bundle = predict.predict(bundle, inputs, str(tmp_path / "b"))
    from_ckpt = predict.predict(workdir, inputs, str(tmp_path / "c"), config=config)
    with open(from_bundle[0], "rb") as a, open(from_ckpt[0], "rb") as b:
        assert a.read() == b.read()  # bitwise-equal predictions
    _, params_b, _ = bundle_lib.load_model(bundle)
    _, params_c, _ = bundle_lib.load_model(workdir, config)
    for a, b in zip(jax.tree.leaves(params_b), jax.tree.leaves(params_c), strict=True):
        np.testing.assert_array_equal(a, b)

    frame = _read(str(tmp_path / "b"))
    expected = [f"top{k}_{w}" for k in (1, 2, 3) for w in ("class", "prob")]
    views = [f"view_weight_{d}" for d in data.DURATIONS]
    assert list(frame.columns) == ["id", "source", *expected, *views]
    test_ids = data.load(config, data.prepare(config, workdir), "test").ids
    assert sorted(frame["id"]) == sorted(test_ids) and frame["id"].is_unique
    probs = frame[["top1_prob", "top2_prob", "top3_prob"]].to_numpy()
    assert np.all((probs >= 0) & (probs <= 1)) and np.all(probs.sum(1) <= 1.0)
    assert np.all(np.diff(probs, axis=1) <= 0)
    assert set(frame["top1_class"]) <= set(config.data.classes)
    np.testing.assert_allclose(frame[views].sum(axis=1), 1.0, atol=1e-5)

    # The same model through evaluate() on the labelled split: same classes and probabilities.
    evaluate.evaluate(config, workdir)
    reference = pd.read_csv(
        os.path.join(workdir, "eval", "test", "predictions.csv"), dtype={"gravityspy_id": str}
    ).set_index("gravityspy_id")
    joined = pd.merge(
        frame, reference, left_on="id", right_index=True, suffixes=("", "_eval"), validate="1:1"
    )
    assert len(joined) == len(frame)
    assert (joined["top1_class"] == joined["predicted"]).mean() > 0.95  # ties may reorder
    np.testing.assert_allclose(joined["top1_prob"], joined["top1_prob_eval"], atol=2e-5)
    np.testing.assert_allclose(
        joined[views].to_numpy(), joined[[f"{v}_eval" for v in views]], atol=2e-5
    )


def test_one_glitch_as_four_pngs_matches_its_h5_sample(trained, tmp_path):
    config, workdir, bundle = trained
    png_test = os.path.join(workdir, "data", "png", "Whistle", "test")
    single = tmp_path / "one_glitch"
    single.mkdir()
    for name in os.listdir(png_test):  # one glitch's four duration PNGs, no label folders
        shutil.copy(os.path.join(png_test, name), single / name)
    assert len(os.listdir(single)) == 4
    written = predict.predict(bundle, str(single), str(tmp_path / "png"), plots="true")
    frame = _read(str(tmp_path / "png"))
    assert len(frame) == 1
    gid = frame["id"][0]

    # The same glitch from the h5 (the published arrays are the PNGs' rgb2gray).
    inputs = predict.demo_input(config, workdir)
    h5_frame = _read(os.path.dirname(predict.predict(bundle, inputs, str(tmp_path / "h5"))[0]))
    row = h5_frame.set_index("id").loc[gid]
    assert row["top1_class"] == frame["top1_class"][0]
    np.testing.assert_allclose(
        frame[["top1_prob", "top2_prob", "top3_prob"]].to_numpy()[0],
        row[["top1_prob", "top2_prob", "top3_prob"]].to_numpy(np.float64),
        atol=2e-6,
    )

    # A single PNG path stands for its glitch; --plots wrote one figure for the sample.
    one_png = str(single / sorted(os.listdir(single))[0])
    again = predict.predict(bundle, one_png, str(tmp_path / "one"))
    assert _read(os.path.dirname(again[0]))["id"].tolist() == [gid]
    figure = [p for p in written if p.endswith(f"{gid}.png")]
    assert len(figure) == 1
    with Image.open(figure[0]) as image:
        assert image.width > 600 and image.height > 200
        assert np.asarray(image.convert("L")).std() > 10  # not blank
