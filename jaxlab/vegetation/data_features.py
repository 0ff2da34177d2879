"""Pure per-record features of a GreenEarthNet window: BAP composite, weather, time.

Numpy in, numpy out, no files: `data.CubeSource` calls these on the arrays it reads.
"""

from __future__ import annotations

import numpy as np
import pandas as pd


def best_available_pixel(values: np.ndarray, clear: np.ndarray, fallback: np.ndarray) -> np.ndarray:
    """Best-available-pixel composite of a frame sequence.

    Each cloudy pixel takes the most recent clear observation before it; pixels cloudy since
    the first frame take the first clear observation of the sequence (filled backwards); pixels
    never clear take `fallback`.

    Args:
      values: [T, H, W, C] reflectance (any value where not clear, NaN allowed).
      clear: [T, H, W] bool.
      fallback: [C] value for pixels never clear.
    Returns:
      [T, H, W, C] float32 without NaN.
    """
    num_frames = values.shape[0]
    out = np.empty(values.shape, np.float32)
    last = np.full(values.shape[1:], np.nan, np.float32)
    for t in range(num_frames):
        last = np.where(clear[t][..., None], values[t], last)
        out[t] = last
    first_clear = np.full(values.shape[1:], np.nan, np.float32)
    for t in reversed(range(num_frames)):
        first_clear = np.where(clear[t][..., None], values[t], first_clear)
    out = np.where(np.isnan(out), first_clear[None], out)
    out = np.where(np.isnan(out), np.asarray(fallback, np.float32), out)
    return out.astype(np.float32)


def rolling_mean(x: np.ndarray, window: int) -> np.ndarray:
    """Centred rolling mean over axis 0 with shrinking windows at the edges (min_periods=1).

    x: [D, V] -> [D, V]; same as pandas `rolling(window, center=True, min_periods=1).mean()`.
    """
    days = x.shape[0]
    before = window // 2
    after = window - 1 - before
    cumsum = np.concatenate([np.zeros((1,) + x.shape[1:]), np.cumsum(x, axis=0)])
    lo = np.clip(np.arange(days) - before, 0, days)
    hi = np.clip(np.arange(days) + after + 1, 0, days)
    return (cumsum[hi] - cumsum[lo]) / (hi - lo).reshape((-1,) + (1,) * (x.ndim - 1))


def fill_gaps(x: np.ndarray) -> np.ndarray:
    """Linear interpolation over NaN days, per column of x [D, V] (constant at the edges)."""
    x = np.array(x, np.float64)
    days = np.arange(x.shape[0])
    for v in range(x.shape[1]):
        ok = np.isfinite(x[:, v])
        if ok.any() and not ok.all():
            x[:, v] = np.interp(days, days[ok], x[ok, v])
    return x


def weather_features(
    daily: np.ndarray, *, window: int, frame_days: np.ndarray, frame_stride: int
) -> np.ndarray:
    """Per target frame and variable: (min anomaly, max anomaly, mean climatology).

    climatology = centred `window`-day rolling mean of the daily series; anomaly = daily -
    climatology (the seasonal trend removed). Frame f covers days (f - stride, f].

    Args:
      daily: [D, V] daily values without NaN.
      frame_days: [F] day index (into D) of each target frame.
    Returns:
      [F, 3 V] float32, variable-major: columns 3v, 3v+1, 3v+2 are min / max anomaly / mean clim.
    """
    clim = rolling_mean(daily, window)
    anomaly = daily - clim
    features = []
    for day in frame_days:
        days = slice(day - frame_stride + 1, day + 1)
        stats = np.stack(
            [anomaly[days].min(0), anomaly[days].max(0), clim[days].mean(0)], axis=-1
        )  # [V, 3]
        features.append(stats.reshape(-1))
    return np.asarray(features, np.float32)


def time_features(
    dates: pd.DatetimeIndex, target_dates: pd.DatetimeIndex, year_center: float, year_scale: float
) -> dict[str, np.ndarray]:
    """Temporal metadata: [3] (year, sin doy, cos doy of the window start), [1], [20] doys."""
    start = dates[0]
    angle = 2 * np.pi * start.day_of_year / 365.25
    return {
        "time_meta": np.array(
            [(start.year - year_center) / year_scale, np.sin(angle), np.cos(angle)], np.float32
        ),
        "target_start_doy": np.array([target_dates[0].day_of_year / 365.25], np.float32),
        "target_doy": target_dates.day_of_year.to_numpy().astype(np.float32),
    }
