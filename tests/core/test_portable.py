"""The bundle's portable StableHLO predict (`jaxlab.core.portable`): written by `export_bundle`,
run by `predict` without the model's code, equal to the Python network to float32 rounding."""

import csv
import json
import os

import jax
import numpy as np
import pytest
from safetensors import numpy as safetensors_np

from jaxlab import export
from jaxlab.configs import example as example_config
from jaxlab.core import portable
from jaxlab.example import predict, train


@pytest.fixture(scope="module")
def bundle_dir(tmp_path_factory):
    config = example_config.get_config("tiny")
    workdir = str(tmp_path_factory.mktemp("run"))
    train.train_and_evaluate(config, workdir)
    out = export.export_bundle(config, workdir, str(tmp_path_factory.mktemp("b") / "bundle"))
    return config, workdir, out


def _predictions(path):
    with open(path) as f:
        return np.array([float(r["prediction"]) for r in csv.DictReader(f)])


def test_bundle_carries_the_artefact_and_its_signature(bundle_dir):
    config, _, bundle = bundle_dir
    assert os.path.isfile(os.path.join(bundle, portable.ARTEFACT_FILE))
    with open(os.path.join(bundle, export.INFO_FILE)) as f:
        entry = json.load(f)[portable.INFO_KEY]
    assert entry["platforms"] == ["cpu", "cuda", "tpu"]
    assert entry["inputs"] == {"x": {"shape": [1024, config.data.num_features], "dtype": "float32"}}
    assert entry["outputs"] == {"prediction": {"shape": [1024], "dtype": "float32"}}
    flat = safetensors_np.load_file(os.path.join(bundle, export.PARAMS_FILE))
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
    _, tree_params, _ = export.load_model(bundle)
    expected = jax.jit(predict.network(config).fn)(tree_params, {"x": x})["prediction"]
    np.testing.assert_allclose(out, expected, rtol=1e-6, atol=1e-6)


def test_wrong_input_shape_and_missing_artefact_are_clear_errors(bundle_dir, tmp_path):
    config, workdir, bundle = bundle_dir
    apply = portable.load_callable(bundle)
    with pytest.raises(ValueError, match=r"input 'x' is float32\[10, .*expects float32\[1024"):
        apply({"x": np.zeros((10, config.data.num_features), np.float32)})
    with pytest.raises(ValueError, match=r"takes inputs \['x'\], got \['y'\]"):
        apply({"y": np.zeros((1024, config.data.num_features), np.float32)})
    bare = export.export_bundle(config, workdir, str(tmp_path / "bare"), stablehlo=False)
    assert not os.path.exists(os.path.join(bare, portable.ARTEFACT_FILE))
    with pytest.raises(FileNotFoundError, match="engine=stablehlo, but --model carries no"):
        portable.use_artefact(bare, "stablehlo")
    assert not portable.use_artefact(bare, "auto") and portable.use_artefact(bundle, "auto")
    assert not portable.use_artefact(workdir, "auto") and not portable.use_artefact(
        bundle, "python"
    )
    with pytest.raises(ValueError, match="engine='gpu'"):
        portable.use_artefact(bundle, "gpu")


# --- every task's predict network: the artefact equals the Python network -------------------


def _task_inputs(name, config, network, gen):
    """Plausible inputs for `network` (one predict batch) with the right dtypes and ranges."""
    if name == "neutrino":
        from jaxlab.neutrino import data_packing

        spec = data_packing.PackSpec.from_config(config)
        g = next(iter(network.inputs.values())).shape[0]
        with config.unlocked():
            config.train.global_batch_size = g
        return data_packing.model_inputs(data_packing.synthetic_batch(config, spec, 0))
    if name == "vegetation":
        from jaxlab.vegetation import steps

        batch = steps.random_batch(config, next(iter(network.inputs.values())).shape[0])
        return {k: batch[k] for k in network.inputs}
    inputs = {}
    for key, aval in network.inputs.items():
        if aval.dtype == np.int32:  # weather's diffusion step t
            inputs[key] = gen.integers(0, config.diffusion.num_steps, aval.shape).astype(np.int32)
        else:
            inputs[key] = gen.normal(size=aval.shape).astype(aval.dtype)
    return inputs


SMALL = {"vegetation": 2, "weather": 2, "glitch": 2, "sales": 4, "neutrino": None}


@pytest.mark.parametrize("name", list(SMALL))
def test_every_task_artefact_equals_its_python_network(name, tmp_path):
    from jaxlab.core import bundle
    from jaxlab.core import mesh as mesh_lib
    from jaxlab.core import task as task_lib

    config = task_lib.load_config(f"{name}:tiny")
    steps = task_lib.import_task(config, "steps")
    predict_module = task_lib.import_task(config, "predict")
    mesh = mesh_lib.make_mesh([("data", -1)], devices=jax.devices()[:1])
    parts = steps.build(config, mesh)
    # Random parameters of the inference shapes (no init compile): equality, not training.
    abstract = jax.eval_shape(
        getattr(steps, "inference_params", lambda s: s.params), parts.abstract_state
    )
    gen = np.random.default_rng(1)
    params = jax.tree.map(lambda a: (0.2 * gen.standard_normal(a.shape)).astype(a.dtype), abstract)
    network = predict_module.network(config, SMALL[name])

    # A bundle of the freshly initialised network: parameters, description, artefact.
    bundle.write_params(str(tmp_path), params, {"task": config.task})
    entry = portable.write(str(tmp_path), network, params)
    with open(tmp_path / export.INFO_FILE, "w") as f:
        json.dump({"task": config.task, portable.INFO_KEY: entry}, f)
    assert set(entry["inputs"]) == set(network.inputs)

    inputs = _task_inputs(name, config, network, gen)
    expected = jax.jit(network.fn)(params, inputs)
    got = portable.load_callable(str(tmp_path))(inputs)
    assert set(got) == set(expected) == set(entry["outputs"])
    for key in expected:
        assert np.all(np.isfinite(expected[key])), key
        assert np.std(np.asarray(expected[key])) > 0, f"{name} {key}: a constant output"
        np.testing.assert_allclose(got[key], expected[key], rtol=1e-5, atol=1e-6, err_msg=key)
