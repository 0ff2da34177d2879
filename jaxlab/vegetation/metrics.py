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

NaN handling follows xarray / pandas: means skip NaN, a group or land cover with no value is
NaN. A constant prediction (persistence) has an undefined r (NaN), so its official R^2 is NaN;
`summarize(..., undefined_r=0.0)` counts such pixels as r = 0 (no explained variance) instead.
"""

from __future__ import annotations

import warnings

import numpy as np

VALID_SCL = (1, 2, 4, 5, 6, 7)
HORIZON_BLOCKS = ((0, 5), (5, 10), (10, 15), (15, 20))
LANDCOVER_NAMES = {10: "forest", 20: "shrub", 30: "grass", 40: "crop"}


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
    """xr.corr over axis 0: pairs where either is NaN dropped; NaN for < 2 pairs / zero variance.

    A series whose sum of squared deviations is below 1e-12 counts as constant (float rounding
    of a constant forecast's mean would otherwise give an arbitrary r).
    """
    ok = np.isfinite(x) & np.isfinite(y)
    n = ok.sum(0)
    x = np.where(ok, x, np.nan)
    y = np.where(ok, y, np.nan)
    with warnings.catch_warnings(), np.errstate(invalid="ignore", divide="ignore"):
        warnings.simplefilter("ignore", RuntimeWarning)
        dx = x - np.nanmean(x, 0)
        dy = y - np.nanmean(y, 0)
        cov = np.nansum(dx * dy, 0)
        ssx, ssy = np.nansum(dx * dx, 0), np.nansum(dy * dy, 0)
        r = cov / np.sqrt(ssx * ssy)
    return np.where((n >= 2) & (ssx > 1e-12) & (ssy > 1e-12), r, np.nan)


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


def summarize(
    scores: list[tuple[str, dict[str, np.ndarray]]], undefined_r: float | None = None
) -> dict[str, float]:
    """Dataset scores from per-cube `pixel_scores` ((cube id, scores) pairs), as eval.py."""
    table = _group_table(scores)
    if len(table.get("landcover", [])) == 0:
        return {"nse": np.nan, "rmse": np.nan, "R2": np.nan, "biasabs": np.nan, "num_pixels": 0}
    r = table["r"]
    if undefined_r is not None:
        r = np.where(np.isnan(r), undefined_r, r)
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
    """Gains against a reference on the pixels both score (eval.py's `compare_dir` branch).

    Pixels are matched by (cube id, pixel position); a (cube id, land cover) group outperforms
    when more than 2 of: rmse gain > 0.01, nnse gain (1/nnse_ref - 1/nnse) > 0.05, R^2 gain >
    0.05, |bias| gain > 0.01. Returns mean gains (per group, per land cover, over land covers)
    and `outperform`, the fraction of groups.
    """
    ref = dict(reference)
    rows: dict[tuple, dict[str, list[float]]] = {}
    for cube_id, s in scores:
        if cube_id not in ref:
            continue
        r_ = ref[cube_id]
        both = s["quality"] & r_["quality"]
        gains = {
            "rmse": r_["rmse"] - s["rmse"],
            "nnse": 1 / r_["nnse"] - 1 / s["nnse"],
            "R2": np.square(s["r"]) - np.square(r_["r"]),
            "biasabs": np.abs(r_["bias"]) - np.abs(s["bias"]),
        }
        for lc in np.unique(s["landcover"][both]):
            sel = both & (s["landcover"] == lc)
            rows[(cube_id, float(lc))] = {k: _nanmean(v[sel]) for k, v in gains.items()}
    if not rows:
        return {"outperform": float("nan")}
    thresholds = {"rmse": 0.01, "nnse": 0.05, "R2": 0.05, "biasabs": 0.01}
    passed = [sum(float(g[k] > t) for k, t in thresholds.items()) > 2 for g in rows.values()]
    out = {"outperform": float(np.mean(passed))}
    for k in thresholds:
        per_lc: dict[float, list[float]] = {}
        for (_, lc), g in rows.items():
            per_lc.setdefault(lc, []).append(g[k])
        out[f"gain_{k}_mean"] = float(
            _nanmean(np.asarray([_nanmean(np.asarray(v)) for v in per_lc.values()]))
        )
    return out
