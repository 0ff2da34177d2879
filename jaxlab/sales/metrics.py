"""Metrics on host arrays: forecast errors with bootstrap intervals, sequence statistics."""

from __future__ import annotations

import numpy as np


def forecast_errors(pred: np.ndarray, target: np.ndarray) -> dict[str, np.ndarray]:
    """Per-window absolute and squared errors averaged over the horizon; pred, target [N, T]."""
    return {
        "abs": np.mean(np.abs(pred - target), axis=1),
        "sq": np.mean(np.square(pred - target), axis=1),
    }


def paired_bootstrap(
    errors_a: dict[str, np.ndarray],
    errors_b: dict[str, np.ndarray],
    *,
    num_resamples: int,
    seed: int,
    level: float = 0.95,
) -> dict[str, float]:
    """MAE / RMSE of a and b, their difference b - a and a percentile bootstrap CI of it.

    Windows are resampled with replacement (the same resample for a and b: a paired bootstrap).
    """
    n = len(errors_a["abs"])
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, n, size=(num_resamples, n))
    out = {}
    for name, key, finish in (("mae", "abs", lambda x: x), ("rmse", "sq", np.sqrt)):
        a, b = errors_a[key], errors_b[key]
        diff = finish(b.mean()) - finish(a.mean())
        boot = finish(b[idx].mean(axis=1)) - finish(a[idx].mean(axis=1))
        lo, hi = np.quantile(boot, [(1 - level) / 2, (1 + level) / 2])
        out.update(
            {
                f"{name}_a": float(finish(a.mean())),
                f"{name}_b": float(finish(b.mean())),
                f"{name}_diff": float(diff),
                f"{name}_diff_lo": float(lo),
                f"{name}_diff_hi": float(hi),
            }
        )
    return out


def weekday_profile(values: np.ndarray, first_dow: np.ndarray) -> np.ndarray:
    """Mean value per day of week (Monday = 0) over windows; values [N, T], first_dow [N]."""
    horizon = values.shape[1]
    dow = (first_dow[:, None] + np.arange(horizon)[None]) % 7
    return np.array([values[dow == d].mean() if (dow == d).any() else np.nan for d in range(7)])


def autocorrelation(values: np.ndarray, max_lag: int) -> np.ndarray:
    """Mean over windows of the within-window autocorrelation at lags 1..max_lag; values [N, T]."""
    centred = values - values.mean(axis=1, keepdims=True)
    var = np.sum(centred**2, axis=1)
    ok = var > 1e-12
    out = []
    for lag in range(1, max_lag + 1):
        cov = np.sum(centred[:, lag:] * centred[:, :-lag], axis=1)
        out.append(float(np.mean(cov[ok] / var[ok])) if ok.any() else 0.0)
    return np.asarray(out)


def profile_correlation(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise Pearson correlation of a, b [N, K]; 0 where a row is constant."""
    a = a - a.mean(axis=1, keepdims=True)
    b = b - b.mean(axis=1, keepdims=True)
    denom = np.sqrt(np.sum(a**2, axis=1) * np.sum(b**2, axis=1))
    return np.where(denom > 1e-12, np.sum(a * b, axis=1) / np.maximum(denom, 1e-12), 0.0)


def sample_statistics(sums: dict[str, float]) -> dict[str, float]:
    """How far generated sequences are from the real targets of the same windows.

    sums: the totals of `steps.eval_step` over a pass (count of values, first and second moments
    of generated and real values, sum of |generated - real|). Returns the mean absolute gap per
    value, the gaps of the means and of the standard deviations, and their sum (the GAN's
    checkpoint metric).
    """
    count = float(sums["count"])
    moments = {}
    for name in ("gen", "real"):
        mean = float(sums[f"{name}_sum"]) / count
        variance = float(sums[f"{name}_sq_sum"]) / count - mean**2
        moments[name] = (mean, np.sqrt(max(variance, 0.0)))
    mean_gap = abs(moments["gen"][0] - moments["real"][0])
    std_gap = abs(moments["gen"][1] - moments["real"][1])
    return {
        "eval_sample_mae": float(sums["abs_err_sum"]) / count,
        "eval_mean_gap": mean_gap,
        "eval_std_gap": std_gap,
        "eval_moment_gap": mean_gap + std_gap,
    }
