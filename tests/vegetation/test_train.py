"""Tiny end-to-end: synthetic cubes -> train (one compilation) -> evaluate from checkpoint."""

import json
import os

import chex
import numpy as np
import xarray as xr

import jaxlab.vegetation as vegetation
from jaxlab.core.writer import read_metrics
from jaxlab.vegetation import data, train
from tests.vegetation import helpers


def test_tiny_train_then_evaluate(tmp_path, monkeypatch):
    config = helpers.tiny_config()
    workdir = str(tmp_path)
    chex.clear_trace_counter()
    monkeypatch.setattr(train, "train_step", chex.assert_max_traces(train.train_step, n=1))
    val = train.train_and_evaluate(config, workdir)

    # Learning: the validation loss falls well below its value after the first epoch, and the
    # clear-pixel delta error below persistence's (delta = 0).
    history = [m["val_loss"] for m in read_metrics(workdir) if "val_loss" in m]
    assert len(history) == config.train.num_epochs
    assert history[-1] < 0.8 * history[0], history
    assert val["val_delta_rmse"] < val["val_persistence_delta_rmse"]

    metrics = vegetation.evaluate(config, workdir)
    out_dir = tmp_path / "eval" / "ood-t_chopped"
    saved = json.loads((out_dir / "metrics.json").read_text())
    assert saved["num_cubes"] == 2 and saved["ndvi_num_pixels"] > 0
    for key in ("ndvi_rmse", "ndvi_r2", "ndvi_nse", "persistence_ndvi_rmse", "persistence_ndvi_r2"):
        assert np.isfinite(metrics[key]), key
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
