"""Tiny end-to-end: synthetic cubes -> train (one compilation) -> evaluate from checkpoint (with
the climatology baseline); resume after a preemption reproduces the uninterrupted run bitwise."""

import copy
import json
import os
import pathlib
import shutil

import chex
import jax
import numpy as np
import pytest
import xarray as xr

import jaxlab.vegetation as vegetation
from jaxlab.core import checkpoint, loop
from jaxlab.core import mesh as mesh_lib
from jaxlab.core.writer import read_metrics
from jaxlab.vegetation import data, metrics, train
from jaxlab.vegetation.evaluate import write_prediction
from tests.vegetation import helpers


def _write_climatology(workdir: str, clim_dir: str, track: str, offset: float) -> None:
    """Official-layout 'climatology' forecasts: each cube's true NDVI at its target days + offset
    (invalid days filled with 0.5), so its scores are known: RMSE = |bias| = |offset|, r = 1."""
    for path in data.list_cubes(os.path.join(workdir, "data"), track):
        region, name = data.region_and_name(path)
        with xr.open_dataset(path, engine="h5netcdf") as ds:
            cube = {k: ds[k].values for k in ("s2_B8A", "s2_B04", "s2_dlmask", "s2_SCL")}
            ndvi, _ = metrics.target_ndvi(*cube.values())
            times = ds.time.values[54::5]
            lat, lon = ds.lat.values, ds.lon.values
        pred = np.nan_to_num(ndvi[54::5], nan=0.5) + offset
        write_prediction(os.path.join(clim_dir, region, name), pred, times, lat, lon)


def _config():
    """tiny (6 epochs of one step, validation every step) with early stopping that fires: with
    min_delta = 1e9 every validation after the first counts as no improvement, so the run stops
    at step 5 (patience 4) and the early-stopping counter moves at every step (which a resume
    with a stale counter would get wrong)."""
    config = helpers.tiny_config()
    config.train.log_every = 1
    config.train.early_stopping_min_delta = 1e9
    config.train.early_stopping_patience = 4
    return config


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """(config, workdir) of one uninterrupted tiny run, its train step traced once."""
    workdir = str(tmp_path_factory.mktemp("vegetation"))
    config = _config()
    chex.clear_trace_counter()
    with pytest.MonkeyPatch.context() as m:
        m.setattr(train, "train_step", chex.assert_max_traces(train.train_step, n=1))
        val = train.train_and_evaluate(config, workdir)
    return config, workdir, val


def test_tiny_train_then_evaluate(trained):
    config, workdir, val = trained
    config = copy.deepcopy(config)
    tmp_path = pathlib.Path(workdir)

    # Learning: the validation loss falls well below its value after the first epoch, and the
    # clear-pixel delta error below persistence's (delta = 0). Early stopping ends it at step 5.
    history = [m["val_loss"] for m in read_metrics(workdir) if "val_loss" in m]
    assert len(history) == config.train.early_stopping_patience + 1 < config.train.num_epochs
    assert history[-1] < 0.8 * history[0], history
    assert val["val_delta_rmse"] < val["val_persistence_delta_rmse"]

    config.eval.climatology_dir = str(tmp_path / "climatology")
    _write_climatology(workdir, config.eval.climatology_dir, "ood-t_chopped", offset=-0.1)
    scores = vegetation.evaluate(config, workdir)
    out_dir = tmp_path / "eval" / "ood-t_chopped"
    saved = json.loads((out_dir / "metrics.json").read_text())
    assert saved["num_cubes"] == 2 and saved["ndvi_num_pixels"] > 0
    for key in ("ndvi_rmse", "ndvi_r2", "ndvi_nse", "persistence_ndvi_rmse", "persistence_ndvi_r2"):
        assert np.isfinite(scores[key]), key
    # The climatology baseline is reported when available, with its known scores, and is the
    # reference of the outperformance score.
    assert saved["climatology_num_cubes"] == 2
    assert saved["climatology_ndvi_num_pixels"] == saved["ndvi_num_pixels"]
    np.testing.assert_allclose(saved["climatology_ndvi_rmse"], 0.1, rtol=1e-4)
    np.testing.assert_allclose(saved["climatology_ndvi_biasabs"], 0.1, rtol=1e-4)
    np.testing.assert_allclose(saved["climatology_ndvi_r2"], 1.0, rtol=1e-4)
    assert 0.0 <= saved["outperform_vs_climatology"] <= 1.0
    assert "outperform_vs_persistence" not in saved
    for name in ("cube0_maps.png", "cube0_pixels.png", "delta_amplitude.png"):
        assert (out_dir / name).stat().st_size > 1000, name

    # Predictions in the official layout, on the cube's target timestamps.
    cube_path = data.list_cubes(os.path.join(workdir, "data"), "ood-t_chopped")[0]
    region, name = data.region_and_name(cube_path)
    pred_path = out_dir / "preds" / region / name
    with (
        xr.open_dataset(pred_path, engine="h5netcdf") as pred,
        xr.open_dataset(cube_path, engine="h5netcdf") as cube,
    ):
        np.testing.assert_array_equal(pred.time.values, cube.time.values[54::5])
        assert pred.ndvi_pred.dims == ("time", "lat", "lon")
        assert pred.ndvi_pred.shape == (20, cube.sizes["lat"], cube.sizes["lon"])


def _rows_by_step(workdir):
    """Each step's logged values, the last write winning (a resumed run re-logs the steps after
    the checkpoint it restored)."""
    rows: dict[int, dict] = {}
    for row in read_metrics(workdir):
        rows.setdefault(row["step"], {}).update(row)
    return rows


def _final_states(config, *workdirs):
    """The latest checkpointed train state of each workdir (host arrays)."""
    mesh = mesh_lib.make_mesh(config.mesh)
    target = train.build(config, workdirs[0], mesh)["target"]
    states = []
    for workdir in workdirs:
        manager = checkpoint.make_manager(os.path.join(workdir, "checkpoints"), read_only=True)
        states.append(jax.device_get(checkpoint.restore(manager, target)))
    return states


def test_resume_after_preemption_matches_uninterrupted_run(trained, tmp_path, monkeypatch):
    """The reference run stops early at step 5 (see `_config`). This one is preempted at step 3
    and its step-3 checkpoint then removed, as when the preemption cuts that save short after
    `early_stopping.json` got step 3's entry: the resumed run restores step 2 and must count from
    step 2's early-stopping state to stop at step 5 too, with bitwise the same state and losses."""
    config, reference, _ = trained
    config = copy.deepcopy(config)
    config.data.dir = os.path.join(reference, "data")  # the same synthetic cubes
    resumed = str(tmp_path / "resumed")
    with monkeypatch.context() as m:
        m.setattr(loop.Preemption, "requested", lambda self, step: step == 3)
        train.train_and_evaluate(config, resumed)
    assert max(_rows_by_step(resumed)) == 3
    with open(os.path.join(resumed, train.EARLY_STOP_FILE)) as f:
        assert json.load(f)["3"]["bad_evals"] == 2
    shutil.rmtree(os.path.join(resumed, "checkpoints", "3"))
    train.train_and_evaluate(config, resumed)

    want, got = _rows_by_step(reference), _rows_by_step(resumed)
    assert sorted(got) == sorted(want) == [1, 2, 3, 4, 5]  # early stop at 5 of 6 steps
    assert sum(row["step"] == 3 and "loss" in row for row in read_metrics(resumed)) == 2
    for step in want:
        for key in ("loss", "regression", "edge", "grad_norm", "lr", "data_checksum", "val_loss"):
            assert got[step][key] == want[step][key], (step, key)
    with open(os.path.join(reference, train.EARLY_STOP_FILE)) as f:
        want_es = json.load(f)["5"]
    with open(os.path.join(resumed, train.EARLY_STOP_FILE)) as f:
        got_es = json.load(f)["5"]
    assert got_es == want_es and want_es["stopped_at"] == 5 and want_es["bad_evals"] == 4
    want_state, got_state = _final_states(config, reference, resumed)
    assert int(got_state.step) == 5
    chex.assert_trees_all_equal(got_state, want_state)
