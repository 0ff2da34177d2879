"""Tiny end-to-end: synthetic GRIB2 -> Zarr -> train (learns, jit once, resumes) -> evaluate."""

import json
import os

import jax
import numpy as np
import pytest

from jaxlab.configs import weather as weather_config
from jaxlab.core import mesh as mesh_lib
from jaxlab.weather import train
from jaxlab.weather.evaluate import evaluate


def tiny_config():
    config = weather_config.get_config("tiny")
    config.train.async_checkpoint = False
    return config


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    workdir = str(tmp_path_factory.mktemp("weather"))
    config = tiny_config()
    metrics = train.train_and_evaluate(config, workdir)
    return config, workdir, metrics


def _rows(workdir):
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f]


def _eval_losses(workdir):
    rows = _rows(workdir)
    return [r["eval_loss"] for r in rows if "eval_loss" in r]


def test_training_learns_and_evaluation_writes_products(trained):
    config, workdir, metrics = trained
    # An untrained network predicts eps with MSE >= 1; predicting eps ~ x_t at high noise alone
    # gets under 1, and the planted advection lowers it further.
    losses = _eval_losses(workdir)
    assert metrics["eval_loss"] < 0.8 and losses[-1] < losses[0], losses
    results = evaluate(config, workdir)
    out = os.path.join(workdir, "eval", "eval")
    with open(os.path.join(out, "metrics.json")) as f:
        saved = json.load(f)
    assert saved["crps"] == pytest.approx(results["crps"])
    for key in (
        "crps",
        "crps_fair",
        "persistence_crps",
        "climatology_crps",
        "spread_skill",
        "def_crps/level100",
        "def_spread_skill/level500",
        "spread_skill/lead1",
        "brier/refc>=35",
        "crps/refc/lead1",
    ):
        assert np.all(np.isfinite(results[key])), key
    assert results["crps_fair"] <= results["crps"]  # the fair score removes a positive bias
    # DEF: noising the initial state to a later diffusion step perturbs it more.
    assert results["def_spread/level500"] > results["def_spread/level100"] > 0.0
    # (Beating the baselines needs the demo's training; see README for its numbers.)
    assert sum(results["rank_histogram/t2m"]) == 2 * 16 * 24  # cases x grid
    for folder in (
        "01_current_state",
        "02_ensemble_mean",
        "03_ensemble_spread",
        "04_probability_maps",
        "05_sample_members",
    ):
        assert os.listdir(os.path.join(out, folder)), folder
    import xarray as xr

    ds = xr.open_dataset(os.path.join(out, "ensemble.nc"), engine="h5netcdf")
    assert ds["refc"].dims == ("lead_time", "member", "y", "x")
    assert ds["refc"].attrs["units"] == "dBZ" and "latitude" in ds.coords
    assert float(ds["prob_refc_ge_35"].max()) <= 1.0


def test_train_step_compiles_once_and_loss_is_finite():
    config = tiny_config()
    mesh = mesh_lib.make_mesh(config.mesh)
    step, state, batch, extras = train.benchmark_setup(config, mesh)
    for _ in range(3):
        state, metrics = step(state, batch)
    assert step._cache_size() == 1  # one trace and compilation for all steps
    assert extras["optimizer_updates_per_step"] == 1.0 / config.optim.grad_accum_steps
    assert np.isfinite(float(jax.device_get(metrics["loss"])))
    assert int(state.step) == 3


def test_resume_continues_from_checkpoint(trained):
    config, workdir, _ = trained
    losses = _eval_losses(workdir)
    config.train.num_steps = 65  # 5 more steps from the step-60 checkpoint
    config.train.eval_every = 5
    train.train_and_evaluate(config, workdir)
    rows = _rows(workdir)
    steps = [r["step"] for r in rows if "eval_loss" in r]
    assert steps[-1] == 65 and len(_eval_losses(workdir)) == len(losses) + 1
