"""metrics.py and evaluate.summarize_scores against the official GreenEarthNet rules, re-stated here
independently: per pixel with plain xarray (`xr.corr` for r), over the dataset with pandas groupby
means and index-aligned gains, as the published eval.py does. Compared on constructed cases: a
constant forecast, a forecast equal to the target, a cube of one land cover, groups whose pixels are
all masked, and a random case."""

import numpy as np
import pandas as pd
import pytest
import xarray as xr

from jaxlab.vegetation import metrics
from jaxlab.vegetation.evaluate import summarize_scores

DAYS, H, W = 30, 3, 4
PRED_DAYS = np.arange(10, 30)
CLEAR_SCL = [1, 2, 4, 5, 6, 7]
LANDCOVERS = {"forest": 10, "shrub": 20, "grass": 30, "crop": 40}
CASES = ["constant_vs_equal", "one_landcover", "masked_groups", "random"]
PASS = {"rmse": 0.01, "nnse": 0.05, "R2": 0.05, "biasabs": 0.01}


# ----------------------------------------------------------------------------- the official rules


def official_pixels(target: xr.Dataset, pred: xr.Dataset, cube_id: str) -> pd.DataFrame:
    """One row per high-quality pixel of a cube, the scorer's per-pixel numbers."""
    usable_all = (target.s2_dlmask < 1) & target.s2_SCL.isin(CLEAR_SCL)
    nir, red = target.s2_B8A, target.s2_B04
    ndvi_all = ((nir - red) / (nir + red + 1e-8)).where(usable_all).clip(-1, 1)
    truth = ndvi_all.sel(time=pred.time)
    usable = usable_all.sel(time=pred.time)
    guess = pred.ndvi_pred.clip(-1, 1).fillna(0.5)
    err2 = (truth - guess) ** 2
    spread = ((truth - truth.mean("time")) ** 2).sum("time")
    columns = {
        "nnse": 1 / (1 + err2.sum("time") / spread),  # 1 / (2 - NSE)
        "rmse": np.sqrt(err2.mean("time")),
        "r": xr.corr(truth, guess, dim="time"),
        "bias": truth.mean("time") - guess.where(usable).mean("time"),
        "sigma": truth.std("time"),
        "lowest": ndvi_all.min("time"),
        "n": usable.sum("time"),
        "n_all": usable_all.sum("time"),
        "landcover": target.esawc_lc,
    }
    for lo in (0, 5, 10, 15):
        columns[f"rmse_{lo}_{lo + 5}"] = np.sqrt(err2.isel(time=slice(lo, lo + 5)).mean("time"))
    df = xr.Dataset(columns).to_dataframe().reset_index()
    good = (
        (df.landcover < 41)
        & (df.lowest > 0)
        & (df.n >= 10)
        & (df.n_all - df.n >= 3)
        & (df.sigma > 0.1)
    )
    return df[good].assign(id=cube_id)


def per_landcover(values: pd.Series, df: pd.DataFrame) -> pd.Series:
    """Mean per (cube, land cover), then per land cover (pandas skips NaN at each level)."""
    return values.groupby([df["id"], df["landcover"]]).mean().groupby(level="landcover").mean()


def official_summary(df: pd.DataFrame) -> dict[str, float]:
    table = {
        "nnse": per_landcover(df.nnse, df),
        "rmse": per_landcover(df.rmse, df),
        "R2": per_landcover(df.r**2, df),
        "biasabs": per_landcover(df.bias.abs(), df),
    }
    out = {
        "nse": 2 - 1 / table["nnse"].mean(),
        "rmse": table["rmse"].mean(),
        "R2": table["R2"].mean(),
        "biasabs": table["biasabs"].mean(),
    }
    for name, code in LANDCOVERS.items():
        # eval.py raises KeyError for a land cover absent from the test set; we expect NaN.
        out[f"nse_{name}"] = 2 - 1 / table["nnse"].get(code, np.nan)
        for key in ("rmse", "R2", "biasabs"):
            out[f"{key}_{name}"] = table[key].get(code, np.nan)
    for lo in (0, 5, 10, 15):
        key = f"rmse_{lo}_{lo + 5}"
        out[key] = per_landcover(df[key], df).mean()
    return out


def official_gains(df: pd.DataFrame, df_ref: pd.DataFrame) -> dict[str, float]:
    """Gains of df over df_ref, pixel tables aligned on (lat, lon, id, land cover)."""
    key = ["lat", "lon", "id", "landcover"]
    a, b = df.set_index(key), df_ref.set_index(key)
    gains = {
        "rmse": b.rmse - a.rmse,
        "nnse": 1 / b.nnse - 1 / a.nnse,
        "R2": a.r**2 - b.r**2,
        "biasabs": b.bias.abs() - a.bias.abs(),
    }
    groups = {k: g.groupby(level=["id", "landcover"]).mean() for k, g in gains.items()}
    out = {f"gain_{k}_mean": g.groupby(level="landcover").mean().mean() for k, g in groups.items()}
    passes = sum((groups[k] > limit).astype(float) for k, limit in PASS.items())
    out["outperform"] = float((passes > 2).mean())
    return out


# ----------------------------------------------------------------------------- constructed cubes


def _target(ndvi, landcover, usable=None, dtype=np.float32) -> xr.Dataset:
    """A daily target cube [DAYS, H, W] with the given NDVI (B8A + B04 = 1)."""
    ndvi = np.asarray(ndvi, np.float64)
    usable = np.ones(ndvi.shape, bool) if usable is None else usable
    dims = ("time", "lat", "lon")
    return xr.Dataset(
        {
            "s2_B8A": (dims, ((1 + ndvi) / 2).astype(dtype)),
            "s2_B04": (dims, ((1 - ndvi) / 2).astype(dtype)),
            "s2_dlmask": (dims, np.where(usable, 0.0, 1.0).astype(dtype)),
            "s2_SCL": (dims, np.full(ndvi.shape, 4.0, dtype)),
            "esawc_lc": (("lat", "lon"), np.asarray(landcover, dtype)),
        },
        coords={
            "time": pd.date_range("2021-04-01", periods=ndvi.shape[0], freq="D"),
            "lat": 50.0 - 0.01 * np.arange(ndvi.shape[1]),
            "lon": 8.0 + 0.01 * np.arange(ndvi.shape[2]),
        },
    )


def _pred(target: xr.Dataset, ndvi) -> xr.Dataset:
    ndvi = np.asarray(ndvi, np.float32)
    return xr.Dataset(
        {"ndvi_pred": (("time", "lat", "lon"), ndvi)},
        coords={"time": target.time.values[PRED_DAYS], "lat": target.lat, "lon": target.lon},
    )


def _seasonal(rng, h=H, w=W) -> np.ndarray:
    """Green-up NDVI per pixel with noise, always above 0 (so pixels pass the quality filter)."""
    base = np.linspace(0.2, 0.8, DAYS)[:, None, None] + rng.uniform(-0.05, 0.05, (1, h, w))
    return np.clip(base + 0.03 * rng.normal(size=(DAYS, h, w)), 0.05, 0.95)


def _truth(target: xr.Dataset) -> np.ndarray:
    """The target's NDVI on the prediction days, NaN where unusable (a forecast equal to it)."""
    nir, red = target.s2_B8A.values, target.s2_B04.values
    ndvi = np.where(target.s2_dlmask.values < 1, (nir - red) / (nir + red + 1e-8), np.nan)
    return ndvi[PRED_DAYS]


def _constant(target: xr.Dataset) -> np.ndarray:
    """Persistence: the day-9 NDVI of each pixel, repeated."""
    nir, red = target.s2_B8A.values[9], target.s2_B04.values[9]
    return np.broadcast_to((nir - red) / (nir + red + 1e-8), (len(PRED_DAYS), H, W))


def _case(name: str):
    """{cube id: (target, model forecast, reference forecast)} of a named case."""
    rng = np.random.default_rng(CASES.index(name))
    lc2 = np.array([[30, 30, 40, 40]] * H)
    cubes = {}
    if name == "constant_vs_equal":
        for cube_id in ("32UNC/a.nc", "33UUP/b.nc"):
            target = _target(_seasonal(rng), lc2)
            cubes[cube_id] = (target, _truth(target), _constant(target))
    elif name == "one_landcover":
        target = _target(_seasonal(rng), np.full((H, W), 10))
        noisy = _truth(target) + 0.05 * rng.normal(size=(len(PRED_DAYS), H, W))
        cubes["32UNC/a.nc"] = (target, noisy, _constant(target))
    elif name == "masked_groups":
        lc = np.array([[20, 20, 30, 40]] * H)
        usable = np.ones((DAYS, H, W), bool)
        usable[PRED_DAYS[:15], :, :2] = False  # shrub: 5 usable target days, below 10: dropped
        target = _target(_seasonal(rng), lc, usable)
        model = _truth(target) - 0.02
        model[:, :, 2] = np.nan  # grass: NaN forecast -> 0.5 everywhere, r undefined (NaN)
        cubes["32UNC/a.nc"] = (target, model, _constant(target))
        other = _target(_seasonal(rng), lc2)
        cubes["31TEJ/c.nc"] = (other, _truth(other) + 0.03, _constant(other))
    elif name == "random":
        for i in range(3):
            lc = rng.choice([10, 20, 30, 40, 50], size=(H, W))
            target = _target(_seasonal(rng), lc, rng.random((DAYS, H, W)) > 0.25)
            model = _truth(target) + 0.1 * rng.normal(size=(len(PRED_DAYS), H, W))
            model[rng.random(model.shape) < 0.05] = np.nan
            ref = _truth(target) + 0.1 * rng.normal(size=model.shape)
            cubes[f"32UNC/r{i}.nc"] = (target, model, ref)
    return cubes


def _ours(cubes):
    """(model scores, reference scores) as evaluate.py builds them from the cubes."""
    model, reference = [], []
    for cube_id, (target, model_ndvi, ref_ndvi) in cubes.items():
        cube = {k: target[k].values for k in ("s2_B8A", "s2_B04", "s2_dlmask", "s2_SCL")}
        cube["esawc_lc"] = target.esawc_lc.values
        model.append((cube_id, metrics.pixel_scores(cube, np.float32(model_ndvi), PRED_DAYS)))
        reference.append((cube_id, metrics.pixel_scores(cube, np.float32(ref_ndvi), PRED_DAYS)))
    return model, reference


def _official(cubes):
    tables = {"model": [], "reference": []}
    for cube_id, (target, model_ndvi, ref_ndvi) in cubes.items():
        tables["model"].append(official_pixels(target, _pred(target, model_ndvi), cube_id))
        tables["reference"].append(official_pixels(target, _pred(target, ref_ndvi), cube_id))
    return {k: pd.concat(v) for k, v in tables.items()}


def _assert_close(ours: dict, official: dict, what: str) -> None:
    for key, want in official.items():
        got = ours[key]
        if np.isnan(want):
            assert np.isnan(got), (what, key, got)
        else:
            np.testing.assert_allclose(got, want, rtol=2e-5, atol=0, err_msg=f"{what} {key}")


@pytest.mark.parametrize("case", CASES)
def test_matches_the_official_rules(case):
    cubes = _case(case)
    model, reference = _ours(cubes)
    official = _official(cubes)
    _assert_close(metrics.summarize(model), official_summary(official["model"]), "model")
    _assert_close(metrics.summarize(reference), official_summary(official["reference"]), "ref")
    want = official_gains(official["model"], official["reference"])
    _assert_close(metrics.outperformance(model, reference), want, "gains")


def test_constant_forecast_is_scored_as_the_official_scorer_does():
    """Persistence's r is rounding-level, not undefined: its official R^2 is ~0 (not NaN), and a
    forecast equal to the target earns the R^2 criterion of outperformance against it."""
    cubes = _case("constant_vs_equal")
    model, persistence = _ours(cubes)
    official = _official(cubes)
    out = summarize_scores({"model": model, "persistence": persistence, "climatology": []})
    want_persistence = official_summary(official["reference"])
    want_gains = official_gains(official["model"], official["reference"])
    assert 0 <= out["persistence_ndvi_r2"] < 1e-10
    np.testing.assert_allclose(out["persistence_ndvi_r2"], want_persistence["R2"], rtol=2e-5)
    np.testing.assert_allclose(out["ndvi_r2"], 1.0, rtol=1e-5)
    assert want_gains["outperform"] == out["outperform_vs_persistence"] == 1.0
    for metric in PASS:
        key = f"gain_{metric}_mean"
        np.testing.assert_allclose(out[f"{key}_vs_persistence"], want_gains[key], rtol=2e-5)
    assert out["gain_R2_mean_vs_persistence"] > 0.05  # the criterion a NaN r used to drop


def test_masked_groups_are_left_out_like_the_official_scorer():
    model, _ = _ours(_case("masked_groups"))
    out = metrics.summarize(model)
    assert np.isnan(out["rmse_shrub"]) and np.isnan(out["nse_shrub"])  # no usable pixel
    # Grass of cube a has NaN r only; grass of cube c still gives the land cover an R^2.
    assert np.isfinite(out["R2_grass"])
    grass_a = [s for cube_id, s in model if cube_id == "32UNC/a.nc"][0]
    assert np.all(np.isnan(grass_a["r"][:, 2]))
