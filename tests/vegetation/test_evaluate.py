"""Baselines in evaluation: climatology read from official-layout files and scored with known
answers beside the model and persistence, and the reference of the outperformance score."""

import numpy as np
import pandas as pd
import pytest
import xarray as xr

from jaxlab.vegetation import metrics
from jaxlab.vegetation.evaluate import (
    clip_summary,
    evaluate,
    read_climatology,
    summarize_scores,
    write_prediction,
)
from tests.vegetation import helpers
from tests.vegetation.test_metrics import DAYS, PRED_INDEX, T, _cube, _ramp

TIMES = pd.date_range("2021-06-01", periods=DAYS, freq="D").values


def _hand_made():
    """One cube with a grass and a crop pixel whose target NDVI rises 0.2 -> 0.8 over the days."""
    ndvi = _ramp(1, 2)
    return _cube(ndvi, [[30, 40]]), ndvi[PRED_INDEX]


def _write_climatology(root, truth, offset=-0.1, region="32UNC", name="c.nc"):
    path = root / region / name
    write_prediction(str(path), truth + offset, TIMES[PRED_INDEX], [50.0], [8.0, 8.1])
    return path


def test_climatology_file_is_read_at_the_target_times(tmp_path):
    _, truth = _hand_made()
    _write_climatology(tmp_path, truth)
    got = read_climatology(str(tmp_path), "32UNC", "c.nc", TIMES[PRED_INDEX], "h5netcdf")
    np.testing.assert_allclose(got, truth - 0.1, rtol=1e-6)
    # A subset of the times selects those frames (the scorer's `sel(time=...)`).
    later = TIMES[PRED_INDEX][5:]
    sub = read_climatology(str(tmp_path), "32UNC", "c.nc", later, "h5netcdf")
    np.testing.assert_allclose(sub, truth[5:] - 0.1, rtol=1e-6)
    # Not available: no directory configured, or a cube the directory lacks.
    assert read_climatology("", "32UNC", "c.nc", TIMES, "h5netcdf") is None
    assert read_climatology(str(tmp_path), "32UNC", "x.nc", TIMES, "h5netcdf") is None


def test_climatology_scores_and_is_the_outperformance_reference(tmp_path):
    cube, truth = _hand_made()
    clim = read_climatology(
        str(_write_climatology(tmp_path, truth).parents[1]),
        "32UNC",
        "c.nc",
        TIMES[PRED_INDEX],
        "h5netcdf",
    )
    persistence = np.broadcast_to(truth[:1] - 0.3, truth.shape)  # a constant forecast
    scores = {
        "model": [("a", metrics.pixel_scores(cube, truth - 0.05, PRED_INDEX))],
        "persistence": [("a", metrics.pixel_scores(cube, persistence, PRED_INDEX))],
        "climatology": [("a", metrics.pixel_scores(cube, clim, PRED_INDEX))],
    }
    out = summarize_scores(scores)
    # Climatology is off by 0.1 everywhere, with the right shape: RMSE = |bias| = 0.1, r = 1.
    assert out["climatology_num_cubes"] == 1
    assert out["climatology_ndvi_num_pixels"] == 2
    np.testing.assert_allclose(out["climatology_ndvi_rmse"], 0.1, rtol=1e-5)
    np.testing.assert_allclose(out["climatology_ndvi_biasabs"], 0.1, rtol=1e-5)
    np.testing.assert_allclose(out["climatology_ndvi_r2"], 1.0, rtol=1e-5)
    np.testing.assert_allclose(out["climatology_ndvi_rmse_crop"], 0.1, rtol=1e-5)
    sst = np.sum(np.square(truth[:, 0, 0] - truth[:, 0, 0].mean()))
    nse = 1 - T * 0.01 / sst
    np.testing.assert_allclose(out["climatology_ndvi_nse"], nse, rtol=1e-4)
    np.testing.assert_allclose(out["ndvi_rmse"], 0.05, rtol=1e-5)
    # Outperformance is against climatology: both groups gain 0.05 in RMSE and |bias| (> 0.01)
    # and 0.0075 T / sst in NNSE (> 0.05), not in R^2 (both r = 1): 3 of 4 -> outperforms.
    assert out["outperform_vs_climatology"] == 1.0
    np.testing.assert_allclose(out["gain_rmse_mean_vs_climatology"], 0.05, rtol=1e-4)
    np.testing.assert_allclose(out["gain_R2_mean_vs_climatology"], 0.0, atol=1e-6)
    assert not any(key.endswith("_vs_persistence") for key in out)
    # Persistence: a constant 0.3 below the first target frame; its official R^2 is the
    # rounding-level square of xr.corr's r (tests/vegetation/test_official_scorer.py).
    assert 0 <= out["persistence_ndvi_r2"] < 1e-10

    # Climatology not available: no climatology keys, persistence is the reference.
    out = summarize_scores({**scores, "climatology": []})
    assert not any(key.startswith("climatology") for key in out)
    assert out["outperform_vs_persistence"] == 1.0
    np.testing.assert_allclose(
        out["gain_rmse_mean_vs_persistence"],
        out["persistence_ndvi_rmse"] - out["ndvi_rmse"],
        rtol=1e-6,
    )
    # Every gain is reported; the model (r = 1) gains all of R^2 over the constant forecast.
    np.testing.assert_allclose(out["gain_R2_mean_vs_persistence"], 1.0, rtol=1e-6)
    for metric in ("rmse", "nnse", "R2", "biasabs"):
        assert np.isfinite(out[f"gain_{metric}_mean_vs_persistence"]), metric


def test_written_predictions_are_clipped_to_the_physical_range(tmp_path):
    """ndvi_pred to [-1, 1] and each band to [0, 1] in the file; the counts name the values that
    lay outside (NaN is neither clipped nor counted)."""
    ndvi = np.array([-1.5, -1.0, 0.3, 1.0, 2.0, np.nan], np.float32).reshape(6, 1, 1)
    red = np.array([-0.2, 0.0, 0.5, 1.0, 1.3, 0.2], np.float32).reshape(6, 1, 1)
    nir = np.full((6, 1, 1), 0.4, np.float32)
    path = tmp_path / "32UNC" / "c.nc"
    counts = write_prediction(
        str(path), ndvi, TIMES[:6], [50.0], [8.0], {"s2_B04": red, "s2_B8A": nir}
    )
    assert counts == {"ndvi": 2, "ndvi_values": 6, "reflectance": 2, "reflectance_values": 12}
    with xr.open_dataset(path, engine="h5netcdf") as ds:
        want = np.float32([-1, -1, 0.3, 1, 1, np.nan])
        np.testing.assert_array_equal(ds.ndvi_pred.values.ravel(), want)
        np.testing.assert_array_equal(ds.s2_B04.values.ravel(), np.float32([0, 0, 0.5, 1, 1, 0.2]))
        np.testing.assert_array_equal(ds.s2_B8A.values, nir)
        assert ds.ndvi_pred.dims == ("time", "lat", "lon")


def test_clip_summary_totals_and_logs(caplog):
    counts = [
        {"ndvi": 1, "ndvi_values": 10, "reflectance": 3, "reflectance_values": 40},
        {"ndvi": 0, "ndvi_values": 10, "reflectance": 2, "reflectance_values": 40},
    ]
    with caplog.at_level("INFO"):
        out = clip_summary({"model": counts, "persistence": counts[1:]})
    assert out == {
        "clipped_ndvi_model": 1,
        "clipped_reflectance_model": 5,
        "clipped_ndvi_persistence": 0,
        "clipped_reflectance_persistence": 2,
    }
    assert "model predictions: clipped 5 of 80 reflectance values to [0, 1]" in caplog.text


def test_missing_climatology_dir_is_a_clear_error(tmp_path):
    config = helpers.tiny_config()
    config.eval.climatology_dir = str(tmp_path / "nope")
    with pytest.raises(FileNotFoundError, match="climatology_dir"):
        evaluate(config, str(tmp_path))
