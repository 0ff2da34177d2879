"""Probabilistic verification as pure functions (numpy or jax arrays), members on axis 0.

CRPS of an ensemble x_1..x_M for an observation y (Gneiting & Raftery 2007; Ferro 2014):
    ensemble: mean_i |x_i - y| - 1 / (2 M^2)       sum_{i,j} |x_i - x_j|
    fair:     mean_i |x_i - y| - 1 / (2 M (M - 1)) sum_{i,j} |x_i - x_j|   (unbiased for M -> inf)
The pair sum is computed from sorted members in O(M log M):
    sum_{i,j} |x_i - x_j| = 2 sum_k (2k - M - 1) x_(k),  k = 1..M.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import jax.scipy.special as jsp
import numpy as np


def _pair_sum(ens):
    m = ens.shape[0]
    xs = jnp.sort(ens, axis=0)
    k = jnp.arange(1, m + 1, dtype=xs.dtype).reshape((m,) + (1,) * (ens.ndim - 1))
    return 2.0 * jnp.sum((2 * k - m - 1) * xs, axis=0)


def crps_ensemble(ens, obs, fair: bool = False):
    """CRPS per point: ens [M, ...], obs [...] -> [...]."""
    m = ens.shape[0]
    skill = jnp.mean(jnp.abs(ens - obs[None]), axis=0)
    denom = 2.0 * m * (m - 1) if fair else 2.0 * m * m
    return skill - _pair_sum(ens) / denom


@functools.partial(jax.jit, static_argnames="fair")
def grid_mean_crps(ens, obs, fair: bool = False):
    """`crps_ensemble` averaged over the grid: ens [M, H, W, C], obs [H, W, C] -> [C]. Jitted:
    the evaluation calls it per case, lead and system, and op by op every operation of it would
    compile on its own for each new shape."""
    return jnp.mean(crps_ensemble(ens, obs, fair), axis=(0, 1))


@jax.jit
def grid_mean_crps_gaussian(mu, sigma, obs):
    """`crps_gaussian` averaged over the grid: mu, sigma, obs [H, W, C] -> [C] (jitted)."""
    return jnp.mean(crps_gaussian(mu, sigma, obs), axis=(0, 1))


def crps_gaussian(mu, sigma, obs):
    """Closed form for N(mu, sigma^2): sigma [z (2 Phi(z) - 1) + 2 phi(z) - 1 / sqrt(pi)]."""
    z = (obs - mu) / sigma
    cdf = 0.5 * (1.0 + jsp.erf(z / math.sqrt(2.0)))
    pdf = jnp.exp(-0.5 * z**2) / math.sqrt(2 * math.pi)
    return sigma * (z * (2 * cdf - 1) + 2 * pdf - 1 / math.sqrt(math.pi))


def spread_skill(ens, obs, axis=None):
    """(spread, rmse): sqrt of the mean unbiased ensemble variance, RMSE of the ensemble mean.

    For a calibrated ensemble spread ~= rmse * sqrt(M / (M + 1)); the ratio reported is
    spread * sqrt((M + 1) / M) / rmse (Fortin et al. 2014), 1 when calibrated.
    """
    m = ens.shape[0]
    mean = jnp.mean(ens, axis=0)
    rmse = jnp.sqrt(jnp.mean((mean - obs) ** 2, axis=axis))
    spread = jnp.sqrt(jnp.mean(jnp.var(ens, axis=0, ddof=1), axis=axis))
    return spread, rmse, spread * math.sqrt((m + 1) / m) / rmse


def rank_histogram(ens, obs) -> np.ndarray:
    """Counts of the observation's rank among M members, [M + 1] (ties broken at random-free
    midpoint: a member equal to the observation counts half below)."""
    ens, obs = np.asarray(ens), np.asarray(obs)
    m = ens.shape[0]
    below = np.sum(ens < obs[None], axis=0) + 0.5 * np.sum(ens == obs[None], axis=0)
    ranks = np.floor(below).astype(int).ravel()
    return np.bincount(ranks, minlength=m + 1)[: m + 1]


def rank_flatness(hist) -> dict[str, float]:
    """How far a rank histogram [M + 1] is from uniform (the calibrated ensemble's).

    chi2: sum (n_i - N / B)^2 / (N / B) over the B = M + 1 bins (chi-square with B - 1 degrees of
    freedom under uniformity; its p-value is meaningless for spatially correlated ranks);
    rel_entropy: KL(p || uniform) = log B - H(p), in nats, 0 for flat, log B for one bin;
    mean_offset: mean rank minus the centre M / 2, in bins (< 0: the observation tends below the
    members, i.e. the ensemble is biased high).
    """
    hist = np.asarray(hist, np.float64)
    bins, total = hist.size, max(hist.sum(), 1.0)
    expected = total / bins
    p = hist / total
    nonzero = p[p > 0]
    return {
        "chi2": float(np.sum((hist - expected) ** 2) / expected),
        "rel_entropy": float(np.log(bins) + np.sum(nonzero * np.log(nonzero))),
        "mean_offset": float(np.sum(p * np.arange(bins)) - (bins - 1) / 2),
    }


def exceedance_probability(ens, threshold):
    """Fraction of members >= threshold, [...]."""
    return jnp.mean((ens >= threshold).astype(jnp.float32), axis=0)


def brier_score(prob, event) -> float:
    return float(np.mean((np.asarray(prob) - np.asarray(event, np.float32)) ** 2))


def reliability(prob, event, num_bins: int = 10) -> dict[str, np.ndarray]:
    """Per forecast-probability bin: mean forecast, observed frequency, count."""
    prob, event = np.asarray(prob).ravel(), np.asarray(event, np.float32).ravel()
    bins = np.minimum((prob * num_bins).astype(int), num_bins - 1)
    count = np.bincount(bins, minlength=num_bins)
    safe = np.maximum(count, 1)
    return {
        "forecast": np.bincount(bins, prob, num_bins) / safe,
        "observed": np.bincount(bins, event, num_bins) / safe,
        "count": count,
    }


def event_key(name: str, threshold: float) -> str:
    """The event "`name` >= `threshold`" as a metric key, e.g. `refc_ge_35` (`brier/refc_ge_35`).

    Only letters, digits and `_ . - /`: TensorBoard renames any other character in a tag, so
    this key is the same in metrics.json and in TensorBoard.
    """
    return f"{name}_ge_{threshold:g}".replace("+", "")
