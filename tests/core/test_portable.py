"""The bundle's portable StableHLO predict (`jaxlab.core.portable`): written by `export_bundle`,
run by `predict` without the model's code, equal to the Python network to float32 rounding."""

import csv
import json
import os

import jax
import numpy as np
import pytest
from safetensors import numpy as safetensors_np

from jaxlab.configs import example as example_config
from jaxlab.core import bundle as bundle_lib
from jaxlab.core import config as config_lib
from jaxlab.core import portable
from jaxlab.example import predict, train
from tests.core import portable_util


@pytest.fixture(scope="module")
def bundle_dir(tmp_path_factory):
    config = example_config.get_config("tiny")
    workdir = str(tmp_path_factory.mktemp("run"))
    train.train_and_evaluate(config, workdir)
    out = bundle_lib.export_bundle(config, workdir, str(tmp_path_factory.mktemp("b") / "bundle"))
    return config, workdir, out


def _predictions(path):
    with open(path) as f:
        return np.array([float(r["prediction"]) for r in csv.DictReader(f)])


def test_bundle_carries_the_artefact_and_its_signature(bundle_dir):
    config, _, bundle = bundle_dir
    assert os.path.isfile(os.path.join(bundle, portable.ARTEFACT_FILE))
    with open(os.path.join(bundle, bundle_lib.INFO_FILE)) as f:
        entry = json.load(f)[portable.INFO_KEY]
    assert entry["platforms"] == ["cpu", "cuda", "tpu"]
    assert entry["inputs"] == {"x": {"shape": [1024, config.data.num_features], "dtype": "float32"}}
    assert entry["outputs"] == {"prediction": {"shape": [1024], "dtype": "float32"}}
    flat = safetensors_np.load_file(os.path.join(bundle, bundle_lib.PARAMS_FILE))
    assert entry["num_param_tensors"] == len(flat)


def test_predict_from_the_artefact_equals_the_python_path(bundle_dir, tmp_path, monkeypatch):
    config, _, bundle = bundle_dir
    x = np.random.default_rng(3).normal(size=(1500, config.data.num_features)).astype(np.float32)
    inputs = str(tmp_path / "new.npz")
    np.savez(inputs, x=x)
    (python_csv,) = predict.predict(bundle, inputs, str(tmp_path / "py"), engine="python")
    # The artefact path must not build the model: make any attempt fail.
    monkeypatch.setattr(predict.model_lib, "make_model", lambda *a, **k: 1 / 0)
    (hlo_csv,) = predict.predict(bundle, inputs, str(tmp_path / "hlo"), engine="stablehlo")
    python, hlo = _predictions(python_csv), _predictions(hlo_csv)
    assert len(hlo) == 1500  # two padded batches of 1024
    np.testing.assert_allclose(hlo, python, rtol=1e-6, atol=1e-6)
    assert np.std(python) > 1e-3  # a trained network, not a constant


def test_plain_jax_loads_the_artefact_as_the_readme_says(bundle_dir):
    config, _, bundle = bundle_dir
    with open(os.path.join(bundle, "predict.stablehlo"), "rb") as f:
        exported = jax.export.deserialize(bytearray(f.read()))
    params = safetensors_np.load_file(os.path.join(bundle, "params.safetensors"))
    x = np.random.default_rng(4).normal(size=(1024, config.data.num_features)).astype(np.float32)
    out = exported.call(params, {"x": x})["prediction"]
    _, tree_params, _ = bundle_lib.load_model(bundle)
    expected = jax.jit(predict.network(config).fn)(tree_params, {"x": x})["prediction"]
    np.testing.assert_allclose(out, expected, rtol=1e-6, atol=1e-6)


def test_wrong_input_shape_and_missing_artefact_are_clear_errors(bundle_dir, tmp_path):
    config, workdir, bundle = bundle_dir
    apply = portable.load_callable(bundle)
    with pytest.raises(ValueError, match=r"input 'x' is float32\[10, .*expects float32\[1024"):
        apply({"x": np.zeros((10, config.data.num_features), np.float32)})
    with pytest.raises(ValueError, match=r"takes inputs \['x'\], got \['y'\]"):
        apply({"y": np.zeros((1024, config.data.num_features), np.float32)})
    bare = bundle_lib.export_bundle(config, workdir, str(tmp_path / "bare"), stablehlo=False)
    assert not os.path.exists(os.path.join(bare, portable.ARTEFACT_FILE))
    stale = bundle_lib.export_bundle(config, workdir, str(tmp_path / "stale"))
    bundle_lib.export_bundle(config, workdir, stale, stablehlo=False)  # the old file stays behind
    assert os.path.exists(os.path.join(stale, portable.ARTEFACT_FILE))
    assert not portable.has_artefact(stale)
    with pytest.raises(FileNotFoundError, match="engine=stablehlo, but --model carries no"):
        portable.use_artefact(bare, "stablehlo")
    assert not portable.use_artefact(bare, "auto") and portable.use_artefact(bundle, "auto")
    assert not portable.use_artefact(workdir, "auto") and not portable.use_artefact(
        bundle, "python"
    )
    with pytest.raises(ValueError, match="engine='gpu'"):
        portable.use_artefact(bundle, "gpu")


# --- every task's predict network: the artefact equals the Python network -------------------


SMALL = {"vegetation": 2, "weather": 2, "glitch": 2, "sales": 4, "neutrino": None}


@pytest.mark.parametrize("name", list(SMALL))
def test_every_task_artefact_equals_its_python_network(name, tmp_path):
    config, path, network, params = portable_util.random_bundle(
        name, str(tmp_path), batch=SMALL[name]
    )
    with open(tmp_path / bundle_lib.INFO_FILE) as f:
        entry = json.load(f)[portable.INFO_KEY]
    assert set(entry["inputs"]) == set(network.inputs)
    gen = np.random.default_rng(0)
    inputs = portable_util.task_inputs(name, config, network, gen)
    expected = jax.jit(network.fn)(params, inputs)
    got = portable.load_callable(str(tmp_path))(inputs)
    assert set(got) == set(expected) == set(entry["outputs"])
    for key in expected:
        assert np.all(np.isfinite(expected[key])), key
        assert np.std(np.asarray(expected[key])) > 0, f"{name} {key}: a constant output"
        np.testing.assert_allclose(got[key], expected[key], rtol=1e-5, atol=1e-6, err_msg=key)


def _csv_columns(path, columns):
    with open(path) as f:
        rows = list(csv.DictReader(f))
    return [r["id" if "id" in r else "event_id"] for r in rows], np.array(
        [[float(r[c]) for c in columns] for r in rows]
    )


# Vegetation's network has one ConvLSTM layer here (its three-layer unrolled encoder's compiles,
# Python and export, were most of this test; the artefact of tiny's network is checked above).
SMALL_MODEL = {"vegetation": {"hidden": (4,), "norm_groups": 2}}


@pytest.mark.slow  # synthetic data, NetCDF, plots
@pytest.mark.parametrize("name", ["glitch", "neutrino", "vegetation"])
def test_task_predict_runs_the_artefact_without_the_model(name, tmp_path, monkeypatch):
    """`predict(engine="stablehlo")` on the task's held-out demo input equals the Python path;
    the model module's `make_model` is made to fail, so the artefact path cannot build it."""
    from jaxlab.core import task as task_lib

    config = config_lib.load_config(f"{name}:tiny")
    config.model.update(SMALL_MODEL.get(name, {}))
    config, bundle, _, _ = portable_util.random_bundle(
        name, str(tmp_path / "bundle"), config=config
    )
    predict_module = task_lib.import_task(config, "predict")
    workdir = str(tmp_path / "work")
    inputs = predict_module.demo_input(config, workdir)
    python = predict_module.predict(bundle, inputs, str(tmp_path / "py"), engine="python")
    monkeypatch.setattr(predict_module.model_lib, "make_model", lambda *a, **k: 1 / 0)
    hlo = predict_module.predict(bundle, inputs, str(tmp_path / "hlo"), engine="stablehlo")
    assert [os.path.basename(p) for p in hlo] == [os.path.basename(p) for p in python]
    if name == "glitch":
        columns = ["top1_prob", "top2_prob", "top3_prob"]
        ids_py, py = _csv_columns(python[0], columns)
        ids_hlo, got = _csv_columns(hlo[0], columns)
        assert ids_py == ids_hlo and len(ids_py) > 0
        np.testing.assert_allclose(got, py, atol=2e-6)  # probabilities floored to 6 digits
    elif name == "neutrino":
        ids_py, py = _csv_columns(python[0], ["azimuth", "zenith"])
        ids_hlo, got = _csv_columns(hlo[0], ["azimuth", "zenith"])
        assert ids_py == ids_hlo and len(ids_py) > 0
        np.testing.assert_allclose(got, py, rtol=1e-5, atol=1e-5)
    else:
        import xarray as xr

        cubes = [p for p in python if p.endswith(".nc")]
        assert cubes
        for path in cubes:
            other = os.path.join(str(tmp_path / "hlo"), os.path.relpath(path, str(tmp_path / "py")))
            with xr.open_dataset(path) as a, xr.open_dataset(other) as b:
                for var in a.data_vars:
                    np.testing.assert_allclose(b[var].values, a[var].values, rtol=1e-4, atol=1e-5)
