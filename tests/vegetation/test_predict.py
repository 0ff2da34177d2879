"""Predict on context-only cubes (no target frames): official GreenEarthNet layout read back with
plain xarray, equal to evaluate's forecasts of the full cubes, bundle == checkpoint bitwise, the
normalisation recomputed from the config alone == the training run's, and a second layout (the
weather on its own dated axis) giving the same forecasts."""

import copy
import glob
import json
import os

import numpy as np
import pandas as pd
import pytest
import xarray as xr

from jaxlab.core import bundle as bundle_lib
from jaxlab.vegetation import data, data_normalisation, evaluate, predict, train
from tests.vegetation import helpers

BANDS = ("s2_B02", "s2_B03", "s2_B04", "s2_B8A")


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny model (2 epochs of one step) and evaluate's predictions of the held-out cubes."""
    workdir = str(tmp_path_factory.mktemp("vegetation_predict"))
    config = helpers.tiny_config()
    config.train.num_epochs = 2
    config.eval.num_plot_cubes = 0
    train.train_and_evaluate(config, workdir)
    evaluate.evaluate(copy.deepcopy(config), workdir)
    return config, workdir


def _read(path):
    with xr.open_dataset(path) as ds:  # plain xarray, its default engine
        return ds.load()


@pytest.mark.slow
def test_context_only_cubes_predict_in_the_official_layout(trained, tmp_path):
    config, workdir = trained
    inputs = predict.demo_input(config, workdir)
    full = data.list_cubes(os.path.join(workdir, "data"), config.eval.split)
    cut = sorted(glob.glob(os.path.join(inputs, "*", "*.nc")))
    assert [os.path.basename(p) for p in cut] == [os.path.basename(p) for p in full]
    # The inputs hold no target frame: every Sentinel-2 value after the 50 context days is NaN,
    # and the weather runs through the forecast period.
    with xr.open_dataset(cut[0]) as ds:
        for name in (*BANDS, "s2_mask", "s2_SCL", "s2_dlmask"):
            assert np.isnan(ds[name].values[50:]).all(), name
            assert np.isfinite(ds[name].values[:50]).any(), name
        assert np.isfinite(ds["eobs_tg"].values).all() and ds.sizes["time"] == 150

    written = predict.predict(workdir, inputs, str(tmp_path / "out"), config=config)
    ncs = sorted(p for p in written if p.endswith(".nc"))
    pngs = sorted(p for p in written if p.endswith(".png"))
    assert len(ncs) == len(pngs) == len(full)
    for path, source in zip(ncs, full, strict=True):
        tile, name = data.region_and_name(source)
        assert path == str(tmp_path / "out" / tile / name)  # {out}/{tile}/{cube}.nc
        got = _read(path)
        with xr.open_dataset(source) as truth:
            times, lat, lon = truth.time.values[54::5], truth.lat.values, truth.lon.values
        assert set(got.data_vars) == {"ndvi_pred", *BANDS}
        for var in got.data_vars.values():
            assert var.dtype == np.float32 and var.dims == ("time", "lat", "lon")
            assert np.isfinite(var.values).all()
        np.testing.assert_array_equal(got.time.values, times)  # the 20 target dates
        np.testing.assert_array_equal(got.lat.values, lat)
        np.testing.assert_array_equal(got.lon.values, lon)
        assert got.ndvi_pred.min() >= -1 and got.ndvi_pred.max() <= 1
        for band in BANDS:
            assert got[band].min() >= 0 and got[band].max() <= 1
        # NDVI is the scorer's formula of the written bands (up to the clipping).
        ndvi = (got.s2_B8A - got.s2_B04) / (got.s2_B8A + got.s2_B04 + 1e-8)
        np.testing.assert_allclose(got.ndvi_pred, np.clip(ndvi, -1, 1), atol=1e-5)
        # Without the targets, the same forecasts as evaluate made from the full cubes.
        evaluated = _read(os.path.join(workdir, "eval", config.eval.split, "preds", tile, name))
        for var in got.data_vars:
            np.testing.assert_allclose(got[var], evaluated[var], rtol=0, atol=1e-6)
        assert got.ndvi_pred.std() > 1e-3  # a real forecast, not a constant
    for png in pngs:
        image = __import__("matplotlib.pyplot").pyplot.imread(png)
        assert image.ndim == 3 and image.shape[1] > 2 * image.shape[0]  # a strip


@pytest.mark.slow
def test_bundle_and_checkpoint_give_bitwise_the_same_files(trained, tmp_path):
    config, workdir = trained
    inputs = predict.demo_input(config, workdir)
    bundle = bundle_lib.export_bundle(config, workdir, str(tmp_path / "bundle"))
    from_ckpt = predict.predict(workdir, inputs, str(tmp_path / "a"), config=config, plots="false")
    from_bundle = predict.predict(bundle, inputs, str(tmp_path / "b"), plots="false")
    assert len(from_ckpt) == len(from_bundle) == 2
    for a, b in zip(from_ckpt, from_bundle, strict=True):
        da, db = _read(a), _read(b)
        for var in da.data_vars:
            np.testing.assert_array_equal(da[var].values, db[var].values)

    # Without any normalisation.json, the statistics recomputed from the config alone are the
    # training run's, bitwise (so a bundle far from its workdir predicts the same).
    norm = predict.recompute_normalisation(config)
    saved = data_normalisation.Normalisation.load(os.path.join(workdir, "normalisation.json"))
    for key in ("band_low", "band_high", "band_median", "weather_mean", "weather_std"):
        np.testing.assert_array_equal(getattr(norm, key), getattr(saved, key))
    # The bundle ships the training statistics (steps.bundle_files); without them and without
    # its source workdir, they are recomputed.
    shipped = os.path.join(bundle, "normalisation.json")
    assert predict.find_normalisation(bundle, config)[1] == shipped
    os.remove(shipped)
    with open(os.path.join(bundle, bundle_lib.INFO_FILE)) as f:
        info = json.load(f)
    info["source_workdir"] = str(tmp_path / "gone")
    with open(os.path.join(bundle, bundle_lib.INFO_FILE), "w") as f:
        json.dump(info, f)
    assert predict.find_normalisation(bundle, config)[1].startswith("recomputed")


@pytest.mark.slow
def test_weather_on_its_own_axis_and_clear_error_without_forecast_weather(trained, tmp_path):
    """Layout 2: Sentinel-2 on a 50-day `time`, E-OBS on a 150-day `time_eobs` -> the same
    forecast as layout 1. A cube with no forecast-period weather is one clear error."""
    config, workdir = trained
    inputs = predict.demo_input(config, workdir)
    first = sorted(glob.glob(os.path.join(inputs, "*", "*.nc")))[0]
    tile, name = data.region_and_name(first)
    with xr.open_dataset(first) as ds:
        ds = ds.load()
    weather = [v for v in ds.data_vars if v.startswith("eobs_")]
    s2 = ds.drop_vars(weather).isel(time=slice(0, 50))
    eobs = ds[weather].rename(time="time_eobs")
    split = helpers.write_cube(str(tmp_path / "split"), xr.merge([s2, eobs]), "t", tile, name)
    a = predict.predict(workdir, first, str(tmp_path / "a"), config=config, plots="false")
    b = predict.predict(workdir, split, str(tmp_path / "b"), config=config, plots="false")
    da, db = _read(a[0]), _read(b[0])
    for var in da.data_vars:
        np.testing.assert_array_equal(da[var].values, db[var].values)
    np.testing.assert_array_equal(da.time.values, db.time.values)

    short = helpers.write_cube(str(tmp_path / "short"), ds.isel(time=slice(0, 50)), "t", tile, name)
    with pytest.raises(data.CubeError, match=rf"{name}: E-OBS variable 'eobs_tg' covers 50 days"):
        predict.predict(workdir, short, str(tmp_path / "c"), config=config)
    assert pd.Timestamp(da.time.values[0]) == pd.Timestamp(ds.time.values[54])
