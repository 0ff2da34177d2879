"""Checks of a GreenEarthNet cube's layout and values: one clear error naming file and variable.

`data.py` (training / evaluation windows) and `predict.py` (context-only cubes) call these before
building records, so a malformed download fails at the first bad file with what is wrong, never
as a bare numpy error or as silently changed data:

  layout   missing variable, wrong dims, non-numeric dtype (e.g. a text land-cover map),
           a `time` axis that is not strictly daily (duplicate or missing dates);
  values   +-Inf reflectance (NaN is "not acquired" and allowed), reflectance outside
           [MIN_REFLECTANCE, MAX_REFLECTANCE] on clear pixels, +-Inf E-OBS weather, E-OBS values
           outside `WEATHER_RANGES`, NaN E-OBS days (an error unless
           `config.data.on_weather_nan = "interpolate"`, then logged with counts).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import xarray as xr

# Clear-pixel reflectance outside this range is not Sentinel-2 L2A on the 0..1 scale (0..10000
# digital numbers, fill values such as -9999).
MIN_REFLECTANCE = -0.5
MAX_REFLECTANCE = 5.0

# Physically possible ranges of the E-OBS daily variables in their published units (tg / tn / tx
# degC, rr mm, pp hPa, hu %, qq W m-2, fg m s-1); generous, to catch fill values (-9999), Kelvin
# or Pa instead of the published units, and corrupt files. Units as published by E-OBS, not
# verified against the GreenEarthNet download.
WEATHER_RANGES = {
    "eobs_tg": (-90.0, 70.0),
    "eobs_tn": (-90.0, 70.0),
    "eobs_tx": (-90.0, 70.0),
    "eobs_rr": (0.0, 2000.0),
    "eobs_pp": (500.0, 1200.0),
    "eobs_hu": (0.0, 100.5),
    "eobs_qq": (0.0, 1500.0),
    "eobs_fg": (0.0, 150.0),
}
WEATHER_NAN_POLICIES = ("error", "interpolate")


class CubeError(ValueError):
    """A cube file that does not match the GreenEarthNet layout; names file and variable."""


def check_variable(ds: xr.Dataset, path: str, name: str, dims: tuple[str, ...]) -> None:
    """`name` exists with exactly `dims` and a numeric dtype."""
    if name not in ds.variables:
        raise CubeError(
            f"{path}: missing variable {name!r} (expected dims {dims}); the file has "
            f"{sorted(ds.data_vars)[:30]}."
        )
    if ds[name].dims != dims:
        raise CubeError(f"{path}: variable {name!r} has dims {ds[name].dims}; expected {dims}.")
    check_numeric(ds, path, name)


def check_numeric(ds: xr.Dataset, path: str, name: str) -> None:
    if ds[name].dtype.kind not in "iuf":
        raise CubeError(
            f"{path}: variable {name!r} has dtype {ds[name].dtype}; expected numbers "
            "(integer or float)."
        )


def read_values(array: xr.DataArray, path: str, name: str) -> np.ndarray:
    """`array.values`, with a read failure (a corrupt chunk) naming file and variable."""
    try:
        return np.asarray(array.values)
    except (OSError, ValueError, RuntimeError) as e:
        raise CubeError(f"{path}: cannot read variable {name!r} ({e}).") from e


def daily_dates(ds: xr.Dataset, path: str, dim: str = "time") -> pd.DatetimeIndex:
    """The coordinate of `dim` as dates; an error unless strictly consecutive days."""
    if dim not in ds.coords:
        raise CubeError(f"{path}: dimension {dim!r} has no coordinate; expected daily dates.")
    values = ds[dim].values
    if not np.issubdtype(values.dtype, np.datetime64):
        raise CubeError(f"{path}: coordinate {dim!r} has dtype {values.dtype}; expected dates.")
    dates = pd.DatetimeIndex(values)
    duplicated = dates[dates.duplicated()]
    if len(duplicated):
        raise CubeError(
            f"{path}: coordinate {dim!r} repeats {len(duplicated)} date(s), e.g. "
            f"{duplicated[0]:%Y-%m-%d}; expected one step per day."
        )
    steps = np.diff(dates.values).astype("timedelta64[s]").astype(np.int64)
    bad = np.flatnonzero(steps != 86_400)
    if len(bad):
        i = int(bad[0])
        raise CubeError(
            f"{path}: coordinate {dim!r} is not consecutive days ({dates[i]:%Y-%m-%d} is followed "
            f"by {dates[i + 1]:%Y-%m-%d}; {len(bad)} such steps); expected daily steps."
        )
    return dates


def check_reflectance(
    bands: np.ndarray, clear: np.ndarray, names: tuple[str, ...], path: str
) -> None:
    """bands [T, H, W, C] (NaN = not acquired), clear [T, H, W]: no Inf; clear pixels in range."""
    for c, name in enumerate(names):
        values = bands[..., c]
        infinite = int(np.isinf(values).sum())
        if infinite:
            raise CubeError(
                f"{path}: variable {name!r} holds {infinite} infinite values; expected "
                "reflectance (NaN where not acquired)."
            )
        on_clear = values[clear]
        outside = (on_clear < MIN_REFLECTANCE) | (on_clear > MAX_REFLECTANCE)
        if outside.any():
            raise CubeError(
                f"{path}: variable {name!r} has {int(outside.sum())} clear-pixel values outside "
                f"[{MIN_REFLECTANCE}, {MAX_REFLECTANCE}] (from {on_clear.min():.4g} to "
                f"{on_clear.max():.4g}); expected reflectance on a 0..1 scale (not 0..10000 "
                "digital numbers)."
            )


def check_weather(values: np.ndarray, name: str, path: str, on_nan: str) -> int:
    """One E-OBS variable's values over the days read: no Inf, in range; returns the NaN count.

    NaN values are an error unless `on_nan == "interpolate"` (config.data.on_weather_nan).
    """
    if on_nan not in WEATHER_NAN_POLICIES:
        raise ValueError(f"data.on_weather_nan = {on_nan!r}; use one of {WEATHER_NAN_POLICIES}.")
    infinite = int(np.isinf(values).sum())
    if infinite:
        raise CubeError(
            f"{path}: E-OBS variable {name!r} holds {infinite} infinite values of "
            f"{values.size}; expected finite daily values."
        )
    low, high = WEATHER_RANGES.get(name, (-np.inf, np.inf))
    with np.errstate(invalid="ignore"):
        outside = (values < low) | (values > high)
    if outside.any():
        raise CubeError(
            f"{path}: E-OBS variable {name!r} has {int(outside.sum())} values outside "
            f"[{low:g}, {high:g}] (from {np.nanmin(values):.6g} to {np.nanmax(values):.6g}); "
            "expected the E-OBS published units, no fill values."
        )
    missing = int(np.isnan(values).sum())
    if missing and on_nan == "error":
        raise CubeError(
            f"{path}: E-OBS variable {name!r} holds {missing} NaN values of {values.size} in "
            "the days read; set config.data.on_weather_nan='interpolate' to fill gaps linearly "
            "(and an all-NaN variable with the training mean), counted in the log."
        )
    return missing


def weather_dim(ds: xr.Dataset, path: str, name: str) -> str:
    """The daily dimension of E-OBS variable `name`: 'time', or the one dated dimension of a
    context-only cube that keeps its weather on its own axis (e.g. 'time_eobs')."""
    dims = ds[name].dims
    if "time" in dims:
        return "time"
    dated = [d for d in dims if d in ds.coords and np.issubdtype(ds[d].dtype, np.datetime64)]
    if len(dated) != 1:
        raise CubeError(
            f"{path}: E-OBS variable {name!r} has dims {dims}; expected one daily time "
            "dimension ('time', or a dated one such as 'time_eobs')."
        )
    return dated[0]


def check_weather_axis(ds: xr.Dataset, path: str, name: str, start, days: int) -> str:
    """E-OBS variable `name` is numeric on daily dates from `start` for at least `days` days;
    returns its time dimension."""
    check_numeric(ds, path, name)
    dim = weather_dim(ds, path, name)
    dates = daily_dates(ds, path, dim)
    if dates[0] != start or len(dates) < days:
        raise CubeError(
            f"{path}: E-OBS variable {name!r} covers {len(dates)} days on {dim!r} from "
            f"{dates[0]:%Y-%m-%d}; expected at least {days} daily values from {start:%Y-%m-%d} "
            "(the context days and the forecast period's weather)."
        )
    return dim
