"""Weather's StableHLO predict: one lead step of the ensemble, the whole fixed-step sampler loop
in one exported function with the members' keys an input (uint32 key data). Given the same keys
it equals the Python step for each sampler; `predict(engine="stablehlo")` runs it without the
model's code and writes the Python path's NetCDF to float32 rounding, members beyond the
artefact's block padded and dropped."""

import os
import shutil

import jax
import numpy as np
import pytest
import xarray as xr

from jaxlab.core import config as config_lib
from jaxlab.core import mesh as mesh_lib
from jaxlab.core import portable
from jaxlab.weather import data, diffusion, ensemble, predict
from jaxlab.weather import model as model_lib
from tests.core import portable_util


def _config(sampler):
    config = config_lib.load_config("weather:tiny")
    config.diffusion.sampler = sampler
    if sampler == "ddpm":  # every one of the T steps: fewer of them keep the test short
        config.diffusion.num_steps = 50
    if sampler == "ddim":
        config.diffusion.eta = 1.0  # fresh noise at every step, as DDPM
    return config


@pytest.mark.parametrize("sampler", ["dpm_solver_pp", "ddpm", "ddim"])
def test_artefact_equals_the_python_step_given_the_same_keys(sampler, tmp_path):
    """The artefact against `ensemble.make_forecast_step` (what predict's Python path runs) for
    keys `ensemble.member_keys`; other keys give other members, the same keys the same."""
    config, path, network, params = portable_util.random_bundle(
        "weather", str(tmp_path), batch=3, config=_config(sampler)
    )
    mesh = mesh_lib.make_mesh([("data", -1)], devices=jax.devices()[:1])
    sched = diffusion.make_schedule(config.diffusion.schedule, config.diffusion.num_steps)
    step = ensemble.make_forecast_step(model_lib.make_model(config), sched, config, mesh, 3)
    gen = np.random.default_rng(0)
    cond = gen.normal(size=network.inputs["cond"].shape).astype(np.float32)
    lead, hour = np.full((3,), 1.0, np.float32), np.array([6.0, 6.0, 7.0], np.float32)
    keys = ensemble.member_keys(jax.random.key(7), 3, 0)
    expected = step(params["ema"], cond, lead, hour, keys, params["scale"])
    apply = portable.load_callable(path)
    inputs = {"cond": cond, "lead": lead, "hour": hour, "keys": jax.random.key_data(keys)}
    got = apply(inputs)["state"]
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(apply(inputs)["state"], got)  # deterministic
    other = apply({**inputs, "keys": jax.random.key_data(ensemble.member_keys(keys[0], 3, 1))})
    assert np.all(np.abs(np.asarray(other["state"]) - np.asarray(got)).max(axis=(1, 2, 3)) > 1e-3)
    assert np.abs(np.asarray(got[0]) - np.asarray(got[1])).max() > 1e-3  # members differ


@pytest.mark.slow  # synthetic GRIB archive, two predicts: 11 s here, 29 s on busy cores
def test_predict_from_the_artefact_equals_the_python_path(tmp_path, monkeypatch):
    config, bundle, _, _ = portable_util.random_bundle("weather", str(tmp_path / "bundle"), batch=2)
    workdir = str(tmp_path / "work")
    inputs = predict.demo_input(config, workdir)
    stats = data.stats_path(data.store_path(config, workdir))
    shutil.copyfile(stats, os.path.join(bundle, data.STATS_FILE))
    options = {"members": "3", "leads": "2", "plots": "false"}  # members in blocks of 2, padded
    (python,) = predict.predict(bundle, inputs, str(tmp_path / "py"), engine="python", **options)
    monkeypatch.setattr(model_lib, "make_model", lambda *a, **k: 1 / 0)  # no model code
    (hlo,) = predict.predict(bundle, inputs, str(tmp_path / "hlo"), engine="stablehlo", **options)
    assert os.path.basename(hlo) == os.path.basename(python)
    with xr.open_dataset(python) as a, xr.open_dataset(hlo) as b:
        assert a.sizes["realization"] == 3 and a.sizes["time"] == 2
        for var in a.data_vars:
            np.testing.assert_allclose(b[var].values, a[var].values, rtol=1e-4, atol=1e-4)
        assert float(a["t2m_spread"].max()) > 0  # members differ
