"""Tiny end-to-end: synthetic cubes -> train (one compilation) -> evaluate from checkpoint (with
the climatology baseline); resume after a preemption reproduces the uninterrupted run bitwise,
early-stopping state (saved inside the checkpoint) included. Plus the loop's early-stopping rules
and the benchmark entry point."""

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

from jaxlab.core import checkpoint, early_stopping, loop, trainer
from jaxlab.core import mesh as mesh_lib
from jaxlab.core.writer import read_metrics
from jaxlab.vegetation import data, evaluate, metrics, steps, train
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
    config.eval.early_stopping_min_delta = 1e9
    config.eval.early_stopping_patience = 4
    return config


# `steps.build`'s `Parts` of this file's training runs, by (config, mesh shape, build kwargs).
_PARTS: dict = {}


def _share_parts(m: pytest.MonkeyPatch) -> None:
    """Within `m`, `steps.build` returns the `Parts` an earlier run of this file built for the
    same arguments, so the resumed runs reuse the reference run's traced and compiled steps:
    tracing and compiling them again (several CPU-seconds a run) would not change what is
    checked, which is what the loop saves and restores across a restart."""
    build = steps.build

    def shared_build(config, mesh, **kwargs):
        key = (config.to_json_best_effort(), mesh.devices.shape, tuple(sorted(kwargs.items())))
        if key not in _PARTS:
            _PARTS[key] = build(config, mesh, **kwargs)
        return _PARTS[key]

    m.setattr(steps, "build", shared_build)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """(config, workdir, val metrics) of one uninterrupted tiny run; `Parts.train_step` (built
    from `steps.train_step`) must be traced once over its 5 steps, else this raises."""
    workdir = str(tmp_path_factory.mktemp("vegetation"))
    config = _config()
    config.data.dir = os.path.join(workdir, "data")  # the resume test's runs read these cubes
    chex.clear_trace_counter()
    with pytest.MonkeyPatch.context() as m:
        m.setattr(steps, "train_step", chex.assert_max_traces(steps.train_step, n=1))
        _share_parts(m)
        val = train.train_and_evaluate(config, workdir)
    yield config, workdir, val
    _PARTS.clear()


@pytest.mark.slow
def test_tiny_train_then_evaluate(trained):
    config, workdir, val = trained
    config = copy.deepcopy(config)
    tmp_path = pathlib.Path(workdir)

    # Learning: the validation loss falls well below its value after the first epoch, and the
    # clear-pixel delta error below persistence's (delta = 0). Early stopping ends it at step 5.
    history = [m["val_loss"] for m in read_metrics(workdir) if "val_loss" in m]
    assert len(history) == config.eval.early_stopping_patience + 1 < config.train.num_epochs
    assert history[-1] < 0.8 * history[0], history
    assert val["val_delta_rmse"] < val["val_persistence_delta_rmse"]

    config.eval.climatology_dir = str(tmp_path / "climatology")
    _write_climatology(workdir, config.eval.climatology_dir, "ood-t_chopped", offset=-0.1)
    scores = evaluate.evaluate(config, workdir)
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
    for metric in ("rmse", "nnse", "R2", "biasabs"):
        assert f"gain_{metric}_mean_vs_climatology" in saved
    assert saved["clipped_ndvi_model"] >= 0 and saved["clipped_reflectance_persistence"] >= 0
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
        assert float(pred.ndvi_pred.min()) >= -1 and float(pred.ndvi_pred.max()) <= 1
        for band in config.data.bands:
            assert pred[band].shape == pred.ndvi_pred.shape
            assert float(pred[band].min()) >= 0 and float(pred[band].max()) <= 1


def _rows_by_step(workdir):
    """Each step's logged values, the last write winning (a resumed run re-logs the steps after
    the checkpoint it restored)."""
    rows: dict[int, dict] = {}
    for row in read_metrics(workdir):
        rows.setdefault(row["step"], {}).update(row)
    return rows


def _final_states(config, *workdirs):
    """The latest checkpointed train state of each workdir (host arrays)."""
    target = steps.build(config, mesh_lib.make_mesh(config.mesh)).abstract_state
    states = []
    for workdir in workdirs:
        manager = checkpoint.make_manager(os.path.join(workdir, "checkpoints"), read_only=True)
        states.append(jax.device_get(checkpoint.restore(manager, target)))
    return states


@pytest.mark.slow
def test_resume_after_preemption_matches_uninterrupted_run(trained, tmp_path, monkeypatch):
    """The reference run stops early at step 5 (see `_config`). This one is preempted at step 3
    and its step-3 checkpoint then removed, as when the preemption cuts that save short: the
    resumed run restores step 2 with the early-stopping state saved inside that checkpoint and
    must stop at step 5 too, with bitwise the same state, losses and early-stopping state."""
    config, reference, _ = trained
    config = copy.deepcopy(config)
    config.data.dir = os.path.join(reference, "data")  # the same synthetic cubes
    resumed = str(tmp_path / "resumed")
    _share_parts(monkeypatch)
    with monkeypatch.context() as m:
        m.setattr(loop.Preemption, "requested", lambda self, step: step == 3)
        train.train_and_evaluate(config, resumed)
    assert max(_rows_by_step(resumed)) == 3
    assert _loop_state(resumed, 3)["early_stopping"]["bad_evals"] == 2
    assert not os.path.exists(os.path.join(resumed, "early_stopping.json"))  # no side file
    shutil.rmtree(os.path.join(resumed, "checkpoints", "3"))
    train.train_and_evaluate(config, resumed)

    want, got = _rows_by_step(reference), _rows_by_step(resumed)
    assert sorted(got) == sorted(want) == [1, 2, 3, 4, 5]  # early stop at 5 of 6 steps
    # Step 3 was trained twice (before the preemption and after restoring step 2); the rows
    # compared are the last written, the resumed run's.
    for step in want:
        for key in ("loss", "regression", "edge", "grad_norm", "lr", "data_checksum", "val_loss"):
            assert got[step][key] == want[step][key], (step, key)
    want_es = _loop_state(reference, 5)["early_stopping"]
    assert _loop_state(resumed, 5)["early_stopping"] == want_es
    assert want_es["stopped_at"] == 5 and want_es["bad_evals"] == 4
    want_state, got_state = _final_states(config, reference, resumed)
    assert int(got_state.step) == 5
    chex.assert_trees_all_equal(got_state, want_state)


def _loop_state(workdir, step):
    manager = checkpoint.make_manager(os.path.join(workdir, "checkpoints"), read_only=True)
    return checkpoint.restore_loop_state(manager, step)


def test_early_stopping_counts_improvements_beyond_min_delta():
    """Against a hand-run of the rule: improved iff loss < best - min_delta; patience 2."""
    es = early_stopping.init()
    history = []
    for step, loss in enumerate([1.0, 0.95, 0.8, 0.75, float("nan"), 0.5], start=1):
        es = early_stopping.update(es, loss, step, patience=2, mode="min", min_delta=0.1)
        history.append((es["best"], es["bad_evals"], es["stopped_at"]))
    assert history == [
        (1.0, 0, None),  # first evaluation
        (1.0, 1, None),  # 0.05 better: not enough
        (0.8, 0, None),  # 0.2 better
        (0.8, 1, None),
        (0.8, 2, 5),  # NaN is never an improvement; patience reached
        (0.8, 2, 5),  # once stopped the state no longer changes
    ]


def test_restored_loop_state(caplog):
    saved = {"best": 0.3, "best_at": 4, "bad_evals": 1, "stopped_at": None}
    assert trainer.restored_loop_state({"early_stopping": saved}, 4)["early_stopping"] == saved
    fresh = {"early_stopping": early_stopping.init()}
    assert trainer.restored_loop_state(None, 0) == fresh
    with caplog.at_level("WARNING"):
        assert trainer.restored_loop_state(None, 6) == fresh
    assert "holds no loop state" in caplog.text


@pytest.mark.slow
def test_benchmark_setup_gives_a_step_that_compiles_once():
    """benchmark_setup's 4 items; its jitted step runs twice (the state donated and replaced)
    without a second trace, and the batch has the record fields at the config's sizes."""
    config = helpers.tiny_config()
    config.mesh = [("data", 2)]
    config.train.global_batch_size = 2
    # One ConvLSTM layer: the property is the entry point's (one trace, donation), and the
    # three-layer unrolled encoder's compile was most of this test's time.
    config.model.hidden, config.model.norm_groups = (4,), 2
    mesh = mesh_lib.make_mesh(config.mesh, devices=jax.devices()[:2])
    chex.clear_trace_counter()
    with pytest.MonkeyPatch.context() as m:
        m.setattr(steps, "train_step", chex.assert_max_traces(steps.train_step, n=1))
        step_fn, state, batch, extras = steps.benchmark_setup(config, mesh)
        for _ in range(2):
            state, metrics_ = step_fn(state, batch)
    assert extras == {} and int(state.step) == 2
    assert batch["context"].shape == (2, 10, 16, 16, 4)
    assert np.isfinite(float(metrics_["loss"]))
