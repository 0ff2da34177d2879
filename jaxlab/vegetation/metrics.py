"""The official GreenEarthNet NDVI scores (the repository's eval.py), in numpy.

Per cube (`pixel_scores`), on the full daily target cube:
  NDVI = (B8A - B04) / (B8A + B04 + 1e-8), valid where s2_dlmask < 1 and s2_SCL in
  {1, 2, 4, 5, 6, 7}, NaN elsewhere, clipped to [-1, 1]; the target is taken at the prediction's
  timestamps. Prediction NDVI clipped to [-1, 1], NaN -> 0.5. Per pixel, over valid times:
  rmse, nnse = 1 / (2 - nse), Pearson r, bias = mean target - mean prediction, rmse over the
  horizon blocks [0, 5), [5, 10), [10, 15), [15, 20); plus n_obs, n_obs_full, sigma_targ,
  min_ndvi_targ for the quality filter (land cover < 41, min NDVI > 0, n_obs >= 10,
  n_obs_full - n_obs >= 3, sigma_targ > 0.1).
Over the dataset (`summarize`): per (cube id, land cover) mean nnse / rmse / r^2 / |bias|, then
mean per land cover, then mean over land covers; NSE = 2 - 1 / mean NNSE. `outperformance`:
per pixel gains against a reference, per-group means, >2 of 4 thresholds passed.

NaN handling follows xarray / pandas, as eval.py: r is `xr.corr`'s (see `pearson_r`, the one rule
for an undefined correlation), every mean skips NaN, and a group or land cover with no value is
NaN.
"""

from __future__ import annotations

import warnings

import numpy as np
import xarray as xr

VALID_SCL = (1, 2, 4, 5, 6, 7)
HORIZON_BLOCKS = ((0, 5), (5, 10), (10, 15), (15, 20))
LANDCOVER_NAMES = {10: "forest", 20: "shrub", 30: "grass", 40: "crop"}
# A group outperforms the reference when more than 2 of its mean gains pass these.
THRESHOLDS = {"rmse": 0.01, "nnse": 0.05, "R2": 0.05, "biasabs": 0.01}


def target_ndvi(nir, red, dlmask, scl) -> tuple[np.ndarray, np.ndarray]:
    """(NDVI [T, H, W] with NaN where invalid, clipped; valid mask [T, H, W])."""
    with np.errstate(invalid="ignore", divide="ignore"):
        valid = (dlmask < 1) & np.isin(scl, VALID_SCL)
        ndvi = (nir - red) / (nir + red + 1e-8)
    return np.clip(np.where(valid, ndvi, np.nan), -1, 1), valid


def _nanmean(x, axis=0):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.nanmean(x, axis=axis)


def pixel_scores(
    cube: dict[str, np.ndarray], pred_ndvi: np.ndarray, pred_index: np.ndarray
) -> dict[str, np.ndarray]:
    """Official per-pixel scores of one cube.

    Args:
      cube: daily target arrays s2_B8A, s2_B04, s2_dlmask, s2_SCL [D, H, W] and esawc_lc [H, W].
      pred_ndvi: [T, H, W] predicted NDVI at the prediction timestamps.
      pred_index: [T] indices into D of the prediction timestamps (`sel(time=pred.time)`).
    Returns:
      dict of [H, W] arrays: rmse, nnse, r, bias, rmse_0_5 ..., n_obs, n_obs_full, sigma_targ,
      min_ndvi_targ, landcover, quality (the high-quality filter).
    """
    full, valid_full = target_ndvi(
        cube["s2_B8A"], cube["s2_B04"], cube["s2_dlmask"], cube["s2_SCL"]
    )
    targ = full[pred_index]
    valid = valid_full[pred_index]
    pred = np.nan_to_num(np.clip(pred_ndvi, -1, 1), nan=0.5)
    sq = np.square(targ - pred)  # NaN where the target is invalid
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        targ_mean = np.nanmean(targ, 0)
        sse = np.nansum(sq, 0)
        sst = np.nansum(np.square(targ - targ_mean), 0)
        # xarray's sum of an all-NaN series is 0, so 0 / 0 = NaN there, as in eval.py.
        nse = 1 - sse / sst
        out = {"nnse": 1 / (2 - nse), "rmse": np.sqrt(np.nanmean(sq, 0))}
        for lo, hi in HORIZON_BLOCKS:
            out[f"rmse_{lo}_{hi}"] = np.sqrt(np.nanmean(sq[lo:hi], 0))
        pred_valid = np.where(valid, pred, np.nan)
        out["bias"] = targ_mean - np.nanmean(pred_valid, 0)
        out["sigma_targ"] = np.nanstd(targ, 0)
        out["min_ndvi_targ"] = np.nanmin(full, 0)
        out["r"] = pearson_r(targ, pred)
    out["n_obs"] = valid.sum(0)
    out["n_obs_full"] = valid_full.sum(0)
    out["landcover"] = np.asarray(cube["esawc_lc"], np.float64)
    out["quality"] = (
        (out["landcover"] < 41)
        & (out["min_ndvi_targ"] > 0)
        & (out["n_obs"] >= 10)
        & ((out["n_obs_full"] - out["n_obs"]) >= 3)
        & (out["sigma_targ"] > 0.1)
    )
    return out


def pearson_r(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Pearson r over axis 0 of x, y [T, ...]: the official scorer's `xr.corr(targ, pred, "time")`.

    This is the one rule for an undefined correlation, used by `summarize` and `outperformance`
    alike: r is what `xr.corr` returns (pairs where either value is NaN dropped), so it is NaN
    only where xarray's is (no finite pair, or a series whose standard deviation, as float
    arithmetic computes it, is exactly 0), and every later mean skips NaN as pandas does. Why:
    a constant forecast such as persistence is a near-constant series for `xr.corr` whenever
    its float mean is off by a rounding error, and then gets a rounding-level r (r^2 ~ 1e-14,
    no explained variance) instead of NaN. The official R^2 of persistence, the R^2 gains
    against it and so its outperformance count those pixels; calling their r undefined (or
    thresholding near-zero variances) drops the R^2 criterion from every comparison with
    persistence and changes the official numbers. Calling xarray itself reproduces them to the
    bit for the same input dtypes.
    """
    dims = ("time",) + tuple(f"axis{i}" for i in range(1, np.ndim(x)))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        r = xr.corr(xr.DataArray(x, dims=dims), xr.DataArray(y, dims=dims), dim="time")
    return np.asarray(r.values)


def _group_table(scores: list[tuple[str, dict[str, np.ndarray]]]) -> dict[str, np.ndarray]:
    """Concatenated high-quality pixels of all cubes: arrays [N] plus 'id' and 'landcover'."""
    columns: dict[str, list] = {}
    for cube_id, s in scores:
        q = s["quality"]
        for key, value in s.items():
            if key != "quality":
                columns.setdefault(key, []).append(np.asarray(value)[q])
        columns.setdefault("id", []).append(np.full(int(q.sum()), cube_id, dtype=object))
    return {k: np.concatenate(v) if v else np.zeros(0) for k, v in columns.items()}


def _landcover_mean(table, values: np.ndarray) -> dict[float, float]:
    """Mean of `values` per (id, landcover) group (NaN skipped), then per land cover."""
    per_lc: dict[float, list[float]] = {}
    keys = list(zip(table["id"], table["landcover"], strict=True))
    groups: dict[tuple, list[int]] = {}
    for i, key in enumerate(keys):
        groups.setdefault(key, []).append(i)
    for (_, lc), rows in groups.items():
        per_lc.setdefault(lc, []).append(_nanmean(values[rows]))
    return {lc: _nanmean(np.asarray(v, np.float64)) for lc, v in sorted(per_lc.items())}


def summarize(scores: list[tuple[str, dict[str, np.ndarray]]]) -> dict[str, float]:
    """Dataset scores from per-cube `pixel_scores` ((cube id, scores) pairs), as eval.py."""
    table = _group_table(scores)
    if len(table.get("landcover", [])) == 0:
        return {"nse": np.nan, "rmse": np.nan, "R2": np.nan, "biasabs": np.nan, "num_pixels": 0}
    r = table["r"]
    per = {
        "nnse": _landcover_mean(table, table["nnse"]),
        "rmse": _landcover_mean(table, table["rmse"]),
        "R2": _landcover_mean(table, np.square(r)),
        "biasabs": _landcover_mean(table, np.abs(table["bias"])),
    }
    mean = {k: _nanmean(np.asarray(list(v.values()), np.float64)) for k, v in per.items()}
    out = {
        "nse": 2 - 1 / mean["nnse"],
        "rmse": mean["rmse"],
        "R2": mean["R2"],
        "biasabs": mean["biasabs"],
        "num_pixels": int(len(r)),
    }
    for lc, name in LANDCOVER_NAMES.items():
        nnse = per["nnse"].get(float(lc), np.nan)
        out[f"nse_{name}"] = 2 - 1 / nnse
        for key in ("rmse", "R2", "biasabs"):
            out[f"{key}_{name}"] = per[key].get(float(lc), np.nan)
    for lo, hi in HORIZON_BLOCKS:
        key = f"rmse_{lo}_{hi}"
        out[key] = _nanmean(np.asarray(list(_landcover_mean(table, table[key]).values())))
    return {k: float(v) if k != "num_pixels" else v for k, v in out.items()}


def outperformance(
    scores: list[tuple[str, dict[str, np.ndarray]]],
    reference: list[tuple[str, dict[str, np.ndarray]]],
) -> dict[str, float]:
    """Gains against a reference, per pixel and then per group (eval.py's `compare_dir` branch).

    Pixels are matched by (cube id, pixel position) over the high-quality pixels of either side,
    as pandas aligns the two score tables: a pixel scored on one side only has NaN gains. Per
    pixel: rmse gain = rmse_ref - rmse, nnse gain = 1/nnse_ref - 1/nnse, R^2 gain = r^2 -
    r_ref^2, |bias| gain = |bias_ref| - |bias| (NaN where an r is NaN, see `pearson_r`). A
    (cube id, land cover) group outperforms when more than 2 of its NaN-skipping mean gains pass
    rmse > 0.01, nnse > 0.05, R^2 > 0.05, |bias| > 0.01 (a NaN mean passes none).
    Returns `outperform` (the fraction of groups) and `gain_<metric>_mean` (mean per group, per
    land cover, then over land covers, NaN skipped).
    """
    mine, ref = dict(scores), dict(reference)
    rows: dict[tuple, dict[str, float]] = {}
    for cube_id in sorted(set(mine) | set(ref)):
        s, r_ = mine.get(cube_id), ref.get(cube_id)
        shown = s if s is not None else r_
        nan = np.full(np.shape(shown["quality"]), np.nan)
        if s is None or r_ is None:
            either, gains = shown["quality"], dict.fromkeys(THRESHOLDS, nan)
        else:
            either = s["quality"] | r_["quality"]
            both = s["quality"] & r_["quality"]
            gains = {
                "rmse": r_["rmse"] - s["rmse"],
                "nnse": 1 / r_["nnse"] - 1 / s["nnse"],
                "R2": np.square(s["r"]) - np.square(r_["r"]),
                "biasabs": np.abs(r_["bias"]) - np.abs(s["bias"]),
            }
            gains = {k: np.where(both, v, np.nan) for k, v in gains.items()}
        for lc in np.unique(shown["landcover"][either]):
            sel = either & (shown["landcover"] == lc)
            rows[(cube_id, float(lc))] = {k: _nanmean(v[sel]) for k, v in gains.items()}
    if not rows:
        return {"outperform": float("nan")}
    passed = [sum(float(g[k] > t) for k, t in THRESHOLDS.items()) > 2 for g in rows.values()]
    out = {"outperform": float(np.mean(passed))}
    for k in THRESHOLDS:
        per_lc: dict[float, list[float]] = {}
        for (_, lc), g in rows.items():
            per_lc.setdefault(lc, []).append(g[k])
        out[f"gain_{k}_mean"] = float(
            _nanmean(np.asarray([_nanmean(np.asarray(v)) for v in per_lc.values()]))
        )
    return out
