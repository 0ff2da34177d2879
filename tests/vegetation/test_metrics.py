"""The official NDVI metric pipeline on hand-made cubes with known answers, and against an xarray
transcription of the published eval.py formulas."""

import numpy as np
import xarray as xr

from jaxlab.vegetation import metrics

DAYS, T = 30, 20
PRED_INDEX = np.arange(10, 30)


def _cube(ndvi, lc, valid=None):
    """Daily cube [DAYS, H, W] with the given target NDVI (B8A + B04 = 1)."""
    ndvi = np.asarray(ndvi, np.float64)
    valid = np.ones(ndvi.shape, bool) if valid is None else valid
    return {
        "s2_B8A": (1 + ndvi) / 2,
        "s2_B04": (1 - ndvi) / 2,
        "s2_dlmask": np.where(valid, 0.0, 1.0),
        "s2_SCL": np.full(ndvi.shape, 4.0),
        "esawc_lc": np.asarray(lc, np.float64),
    }


def _ramp(h=1, w=1, lo=0.2, hi=0.8):
    return np.broadcast_to(np.linspace(lo, hi, DAYS)[:, None, None], (DAYS, h, w)).copy()


def test_offset_prediction_known_scores():
    ndvi = _ramp()
    cube = _cube(ndvi, [[40]])
    target = ndvi[PRED_INDEX]
    s = metrics.pixel_scores(cube, target + 0.1, PRED_INDEX)
    np.testing.assert_allclose(s["rmse"], 0.1, rtol=1e-6)
    np.testing.assert_allclose(s["bias"], -0.1, rtol=1e-6)
    np.testing.assert_allclose(s["r"], 1.0, rtol=1e-6)
    nse = 1 - T * 0.01 / np.sum((target - target.mean()) ** 2)
    np.testing.assert_allclose(s["nnse"], 1 / (2 - nse), rtol=1e-6)
    for key in ("rmse_0_5", "rmse_5_10", "rmse_10_15", "rmse_15_20"):
        np.testing.assert_allclose(s[key], 0.1, rtol=1e-6)
    assert s["n_obs"][0, 0] == 20 and s["n_obs_full"][0, 0] == 30 and s["quality"][0, 0]


def test_validity_mask_and_nan_fill():
    ndvi = _ramp()
    valid = np.ones_like(ndvi, bool)
    valid[12] = False  # a cloudy target day
    cube = _cube(ndvi, [[40]], valid)
    cube["s2_SCL"][14] = 9.0  # a cloud in SCL
    pred = ndvi[PRED_INDEX].copy()
    pred[2] = 5.0  # on the invalid day: must not count
    pred[4] = np.nan  # NaN prediction on an SCL-invalid day
    pred[7] = np.nan  # NaN on a valid day -> 0.5
    s = metrics.pixel_scores(cube, pred, PRED_INDEX)
    assert s["n_obs"][0, 0] == 18 and s["n_obs_full"][0, 0] == 28
    np.testing.assert_allclose(s["rmse"], np.sqrt((ndvi[17, 0, 0] - 0.5) ** 2 / 18), rtol=1e-6)


def test_quality_filter():
    ndvi = _ramp(1, 4)
    lc = [[10, 50, 30, 40]]
    valid = np.ones_like(ndvi, bool)
    valid[10:21, 0, 2] = False  # only 9 valid target frames
    ndvi[:, 0, 3] = 0.5  # flat: std 0 < 0.1
    s = metrics.pixel_scores(_cube(ndvi, lc, valid), ndvi[PRED_INDEX], PRED_INDEX)
    np.testing.assert_array_equal(s["quality"][0], [True, False, False, False])


def _scores_with_rmse(rmse_by_pixel, lc):
    """Pixel scores of a cube where each pixel's prediction is off by its constant (negative
    offsets keep the prediction inside the [-1, 1] clip)."""
    ndvi = _ramp(1, len(lc))
    pred = ndvi[PRED_INDEX] + np.asarray(rmse_by_pixel)[None, None, :]
    return metrics.pixel_scores(_cube(ndvi, [lc]), pred, PRED_INDEX)


def test_summarize_aggregates_per_cube_then_landcover():
    # Cube a: two crop pixels (rmse 0.1, 0.3) and one grass (0.2); cube b: one crop (0.5).
    a = _scores_with_rmse([-0.1, -0.3, -0.2], [40, 40, 30])
    b = _scores_with_rmse([-0.5], [40])
    out = metrics.summarize([("a", a), ("b", b)])
    # crop: mean(mean(0.1, 0.3), 0.5) = 0.35; grass 0.2; over land covers 0.275.
    np.testing.assert_allclose(out["rmse_crop"], 0.35, rtol=1e-6)
    np.testing.assert_allclose(out["rmse_grass"], 0.2, rtol=1e-6)
    np.testing.assert_allclose(out["rmse"], 0.275, rtol=1e-6)
    np.testing.assert_allclose(out["biasabs"], 0.275, rtol=1e-6)
    np.testing.assert_allclose(out["R2"], 1.0, rtol=1e-6)
    assert np.isnan(out["rmse_forest"])
    nnse = {
        k: 1
        / (2 - (1 - T * e**2 / np.sum((_ramp()[PRED_INDEX] - _ramp()[PRED_INDEX].mean()) ** 2)))
        for k, e in (("a1", 0.1), ("a2", 0.3), ("g", 0.2), ("b", 0.5))
    }
    crop = np.mean([np.mean([nnse["a1"], nnse["a2"]]), nnse["b"]])
    np.testing.assert_allclose(out["nse"], 2 - 1 / np.mean([crop, nnse["g"]]), rtol=1e-6)


def test_r_of_a_constant_forecast_follows_xr_corr():
    """A constant whose float mean is inexact gets a rounding-level r (as xr.corr, which the
    official scorer uses), one whose mean is exact (0.5 over 20 days) an undefined one (NaN);
    summarize skips the NaN and keeps the rounding-level R^2."""
    ndvi = _ramp(1, 2).astype(np.float32)
    pred = np.empty((T, 1, 2), np.float32)
    pred[:, 0, 0], pred[:, 0, 1] = 0.4, 0.5
    s = metrics.pixel_scores(_cube(ndvi, [[40, 30]]), pred, PRED_INDEX)
    assert 0 < abs(s["r"][0, 0]) < 1e-6 and np.isnan(s["r"][0, 1])
    out = metrics.summarize([("a", s)])
    np.testing.assert_allclose(out["R2_crop"], np.float32(s["r"][0, 0]) ** 2, rtol=1e-5)
    assert np.isnan(out["R2_grass"]) and out["R2"] == out["R2_crop"]


def test_outperformance():
    good = _scores_with_rmse([-0.01, -0.01], [40, 30])
    ref = _scores_with_rmse([-0.2, -0.015], [40, 30])
    out = metrics.outperformance([("a", good)], [("a", ref)])
    # Crop group: rmse gain 0.19, nnse gain > 0.05, |bias| gain 0.19, R^2 gain 0 -> 3 > 2: yes.
    # Grass group: gains 0.005 -> no. Fraction 0.5.
    assert out["outperform"] == 0.5
    np.testing.assert_allclose(out["gain_rmse_mean"], np.mean([0.19, 0.005]), rtol=1e-6)


def _official_xarray(cube, pred, pred_index):
    """The published eval.py `compute_metrics` formulas, transcribed with xarray."""
    dims = ("time", "lat", "lon")
    targ = xr.Dataset({k: (dims, v) for k, v in cube.items() if k != "esawc_lc"})
    targ = targ.assign_coords(time=np.arange(DAYS))
    pred = xr.Dataset({"ndvi_pred": (dims, pred)}).assign_coords(time=pred_index)
    nir, red = targ.s2_B8A, targ.s2_B04
    mask_full = (targ.s2_dlmask < 1) & targ.s2_SCL.isin([1, 2, 4, 5, 6, 7])
    mask = mask_full.sel(time=pred.time)
    full = ((nir - red) / (nir + red + 1e-8)).where(mask_full == 1, np.nan).clip(-1, 1)
    t = full.sel(time=pred.time)
    p = pred["ndvi_pred"].clip(-1, 1).fillna(0.5)
    out = {
        "nnse": 1
        / (2 - (1 - ((t - p) ** 2).sum("time") / ((t - t.mean("time")) ** 2).sum("time"))),
        "rmse": ((t - p) ** 2).mean("time") ** 0.5,
        "bias": t.mean("time") - p.where(mask == 1, np.nan).mean("time"),
        "r": xr.corr(t, p, dim="time"),
        "sigma_targ": t.std("time"),
        "min_ndvi_targ": full.min("time"),
        "n_obs": (mask == 1).sum("time"),
        "n_obs_full": (mask_full == 1).sum("time"),
    }
    for i in (0, 5, 10, 15):
        out[f"rmse_{i}_{i + 5}"] = ((t - p) ** 2).isel(time=slice(i, i + 5)).mean("time") ** 0.5
    return {k: v.values for k, v in out.items()}


def test_matches_xarray_transcription_of_eval_py():
    rng = np.random.default_rng(0)
    h, w = 4, 5
    ndvi = np.clip(_ramp(h, w) + 0.1 * rng.normal(size=(DAYS, h, w)), -0.9, 0.9)
    valid = rng.random((DAYS, h, w)) > 0.3
    cube = _cube(ndvi, np.full((h, w), 40.0), valid)
    cube["s2_B8A"] = np.where(rng.random((DAYS, h, w)) < 0.1, np.nan, cube["s2_B8A"])
    pred = ndvi[PRED_INDEX] + 0.1 * rng.normal(size=(T, h, w))
    pred[rng.random(pred.shape) < 0.05] = np.nan
    ours = metrics.pixel_scores(cube, pred, PRED_INDEX)
    official = _official_xarray(cube, pred, PRED_INDEX)
    for key, value in official.items():
        np.testing.assert_allclose(ours[key], value, rtol=1e-6, atol=1e-9, err_msg=key)
