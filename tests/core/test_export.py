"""Bundles: safetensors params + config; a bundle and its checkpoint predict bitwise the same."""

import csv
import json
import os

import numpy as np
import pytest
from safetensors import numpy as safetensors_np

from jaxlab.configs import example as example_config
from jaxlab.core import bundle as bundle_lib
from jaxlab.example import predict, train


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    config = example_config.get_config("tiny")
    workdir = str(tmp_path_factory.mktemp("run"))
    train.train_and_evaluate(config, workdir)
    return config, workdir


def _read_predictions(path):
    with open(path) as f:
        rows = list(csv.DictReader(f))
    return np.array([float(r["prediction"]) for r in rows]), [int(r["index"]) for r in rows]


def test_bundle_and_checkpoint_predict_bitwise_the_same(trained, tmp_path):
    config, workdir = trained
    bundle = bundle_lib.export_bundle(config, workdir, str(tmp_path / "bundle"))
    assert sorted(os.listdir(bundle)) == sorted(
        [bundle_lib.PARAMS_FILE, bundle_lib.CONFIG_FILE, bundle_lib.INFO_FILE, bundle_lib.CARD_FILE]
        + ["predict.stablehlo"]  # the portable predict (tests/core/test_portable.py)
    )
    with open(os.path.join(bundle, bundle_lib.INFO_FILE)) as f:
        info = json.load(f)
    assert info["task"] == "jaxlab.example" and info["checkpoint_step"] > 0
    assert "eval_mse" in info["metrics"]

    # Unlabelled input: x only.
    x = np.random.default_rng(1).normal(size=(37, config.data.num_features)).astype(np.float32)
    inputs = str(tmp_path / "new.npz")
    np.savez(inputs, x=x)
    (written,) = predict.predict(bundle, inputs, str(tmp_path / "a"))
    from_bundle, index = _read_predictions(written)
    (written,) = predict.predict(workdir, inputs, str(tmp_path / "b"), config=config)
    from_ckpt, _ = _read_predictions(written)
    assert index == list(range(37))
    np.testing.assert_array_equal(from_bundle, from_ckpt)

    # The bundle's tensors are the checkpoint's parameters, bitwise; no optimizer state.
    _, params, _ = bundle_lib.load_model(workdir, config)
    flat = safetensors_np.load_file(os.path.join(bundle, bundle_lib.PARAMS_FILE))
    assert flat.keys() == bundle_lib.flatten_params(params).keys()
    for name, value in bundle_lib.flatten_params(params).items():
        np.testing.assert_array_equal(flat[name], value)


def test_bundle_with_wrong_task_or_shape_is_one_clear_error(trained, tmp_path):
    config, workdir = trained
    bundle = bundle_lib.export_bundle(config, workdir, str(tmp_path / "bundle"))
    with pytest.raises(ValueError, match="holds a jaxlab.example model; .* jaxlab.glitch"):
        bundle_lib.load_model(bundle, task="jaxlab.glitch")
    other = example_config.get_config("tiny")
    other.model.hidden = (32,)
    expected = r"parameter 'Dense_0/bias' is float32\[16\]; .* expects float32\[32\]"
    with pytest.raises(ValueError, match=expected):
        bundle_lib.load_model(bundle, config=other)
