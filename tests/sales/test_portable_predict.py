"""Sales' StableHLO predict: the generator and the forecaster in one exported function, the
scenario noise an input. `predict(engine="stablehlo")` runs it without the model's code and
writes the Python path's files to float32 rounding; products and draws beyond the artefact's
block are padded and dropped."""

import json
import os

import jax
import numpy as np
import pandas as pd
import pytest
from safetensors import numpy as safetensors_np

from jaxlab.core import bundle as bundle_lib
from jaxlab.core import config as config_lib
from jaxlab.core import mesh as mesh_lib
from jaxlab.core import portable
from jaxlab.sales import forecast, predict, steps
from jaxlab.sales import model as model_lib
from tests.core import portable_util

BLOCK = (2, 3)  # the artefact's (products, scenarios): predict's 5 products x 5 draws pad both


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    config, path, network, params = portable_util.random_bundle(
        "sales", str(tmp_path_factory.mktemp("sales") / "bundle"), batch=BLOCK
    )
    return config, path, network, params


def test_signature_names_both_parameter_files(bundle):
    config, path, network, params = bundle
    with open(os.path.join(path, bundle_lib.INFO_FILE)) as f:
        entry = json.load(f)[portable.INFO_KEY]
    assert entry["params"] == {"params": "params.safetensors", "forecaster": steps.FORECASTER_FILE}
    assert entry["inputs"]["noise"]["shape"] == [2, 3, config.data.horizon, config.gan.noise_dim]
    assert entry["outputs"] == {
        "scenarios": {"shape": [2, 3, config.data.horizon], "dtype": "float32"},
        "forecast": {"shape": [2, config.data.horizon], "dtype": "float32"},
    }
    files = [bundle_lib.PARAMS_FILE, steps.FORECASTER_FILE]
    tensors = sum(len(safetensors_np.load_file(os.path.join(path, f))) for f in files)
    assert entry["num_param_tensors"] == tensors


def test_plain_jax_call_equals_the_generator_and_forecaster(bundle):
    """The README's plain-JAX call with one dict per parameter file, against the two modules
    applied separately (the generator row by row of its draws)."""
    config, path, network, params = bundle
    with open(os.path.join(path, portable.ARTEFACT_FILE), "rb") as f:
        exported = jax.export.deserialize(bytearray(f.read()))
    flat = {
        "params": safetensors_np.load_file(os.path.join(path, "params.safetensors")),
        "forecaster": safetensors_np.load_file(os.path.join(path, steps.FORECASTER_FILE)),
    }
    inputs = portable_util.task_inputs("sales", config, network, np.random.default_rng(0))
    out = exported.call(flat, inputs)
    generator = jax.jit(model_lib.make_gan(config)[0].apply)
    cond = model_lib.condition(inputs)
    for s in range(BLOCK[1]):
        draw = generator({"params": params["params"]}, inputs["noise"][:, s], *cond)
        np.testing.assert_allclose(out["scenarios"][:, s], draw, rtol=1e-5, atol=1e-6)
    point = jax.jit(model_lib.make_forecaster(config).apply)(
        {"params": params["forecaster"]}, *cond
    )
    np.testing.assert_allclose(out["forecast"], point, rtol=1e-5, atol=1e-6)
    assert np.std(np.asarray(out["scenarios"])) > 1e-3


@pytest.mark.slow  # synthetic panel, two predicts: 6 s here, 22 s on busy cores
def test_predict_from_the_artefact_equals_the_python_path(bundle, tmp_path, monkeypatch):
    config, path, _, _ = bundle
    inputs = predict.demo_input(config, str(tmp_path / "work"))
    options = {"num_scenarios": "5"}  # 5 default products x 5 draws: blocks of 2 x 3, padded
    python = predict.predict(path, inputs, str(tmp_path / "py"), engine="python", **options)
    for name in ("make_gan", "make_forecaster"):  # the artefact path must build no model
        monkeypatch.setattr(model_lib, name, lambda *a, **k: 1 / 0)
    monkeypatch.setattr(forecast, "build", lambda *a, **k: 1 / 0)
    hlo = predict.predict(path, inputs, str(tmp_path / "hlo"), engine="auto", **options)
    assert [os.path.basename(p) for p in hlo] == [os.path.basename(p) for p in python]
    for name, columns in (
        (predict.SCENARIOS_FILE, ["units"]),
        (predict.FORECAST_FILE, ["forecast", "p10", "p90"]),
    ):
        a = pd.read_csv(os.path.join(tmp_path / "py", name))
        b = pd.read_csv(os.path.join(tmp_path / "hlo", name))
        key = [c for c in a.columns if c not in columns]
        assert len(a) > 0 and a[key].equals(b[key]), name
        np.testing.assert_allclose(b[columns], a[columns], rtol=2e-5, atol=1e-5, err_msg=name)
    scenarios = pd.read_csv(os.path.join(tmp_path / "py", predict.SCENARIOS_FILE))
    assert len(scenarios) == predict.DEFAULT_PRODUCTS * 5 * config.data.horizon
    assert scenarios.groupby("scenario")["units"].std().min() > 0  # draws differ


def test_export_without_or_with_a_wrong_forecaster_file(tmp_path):
    """A bundle without the forecaster's file gets no artefact (its Python predict cannot run
    either); one whose file does not fit the config's forecaster is one clear error."""
    config = config_lib.load_config("sales:tiny")
    network = predict.network(config)
    params = network.extra_params[predict.FORECASTER][1]  # any tree: shapes only
    mesh = mesh_lib.make_mesh([("data", -1)], devices=jax.devices()[:1])
    generator = steps.build(config, mesh).abstract_state.params
    assert portable.export_task_network(config, generator, str(tmp_path)) == {}
    assert not os.path.exists(tmp_path / portable.ARTEFACT_FILE)
    flat = bundle_lib.flatten_params(jax.tree.map(lambda a: np.zeros(a.shape, a.dtype), params))
    flat.pop(next(iter(flat)))
    safetensors_np.save_file(flat, str(tmp_path / steps.FORECASTER_FILE))
    with pytest.raises(ValueError, match=f"{steps.FORECASTER_FILE}: its tensors do not match"):
        portable.export_task_network(config, generator, str(tmp_path))
