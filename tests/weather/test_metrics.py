"""CRPS against the closed-form Gaussian CRPS and the brute-force pairwise formula; other scores."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
from scipy import stats

from jaxlab.weather import metrics


def brute_force_crps(ens, obs, fair):
    m = len(ens)
    skill = np.mean(np.abs(ens - obs))
    pairs = sum(abs(a - b) for a, b in itertools.product(ens, ens))
    return skill - pairs / (2 * m * (m - 1) if fair else 2 * m * m)


def test_crps_matches_pairwise_formula():
    rng = np.random.default_rng(0)
    ens = rng.normal(size=(7, 5)).astype(np.float64)
    obs = rng.normal(size=5)
    for fair in (False, True):
        got = np.asarray(metrics.crps_ensemble(jnp.asarray(ens), jnp.asarray(obs), fair=fair))
        want = [brute_force_crps(ens[:, j], obs[j], fair) for j in range(5)]
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_crps_gaussian_closed_form_against_integral():
    """Closed form vs numerical integral of (F(x) - 1{x >= y})^2."""
    mu, sigma, y = 0.3, 1.7, 1.1
    x = np.linspace(-15, 15, 200001)
    integrand = (stats.norm.cdf(x, mu, sigma) - (x >= y)) ** 2
    numeric = np.trapezoid(integrand, x)
    np.testing.assert_allclose(float(metrics.crps_gaussian(mu, sigma, y)), numeric, rtol=1e-4)


def test_fair_crps_of_large_gaussian_ensemble_matches_closed_form():
    mu, sigma = 1.0, 2.0
    obs = jnp.linspace(-3, 5, 9)
    ens = mu + sigma * jax.random.normal(jax.random.key(0), (4000, 9))
    fair = np.asarray(metrics.crps_ensemble(ens, obs, fair=True))
    exact = np.asarray(metrics.crps_gaussian(mu, sigma, obs))
    np.testing.assert_allclose(fair, exact, rtol=0.03, atol=0.01)
    # A small ensemble: the fair score is unbiased, the plain one too high by sigma/(M sqrt pi).
    small = mu + sigma * jax.random.normal(jax.random.key(1), (4, 20000))
    y = jnp.zeros(20000)
    plain = float(metrics.crps_ensemble(small, y).mean())
    fair_small = float(metrics.crps_ensemble(small, y, fair=True).mean())
    exact0 = float(metrics.crps_gaussian(mu, sigma, 0.0))
    assert abs(fair_small - exact0) < 0.02
    np.testing.assert_allclose(plain - fair_small, sigma / (4 * np.sqrt(np.pi)), rtol=0.05)


def test_spread_skill_is_one_for_calibrated_ensemble():
    key1, key2 = jax.random.split(jax.random.key(2))
    m, n = 8, 50000
    center = jax.random.normal(key1, (n,))
    draws = center + jax.random.normal(key2, (m + 1, n))  # members and truth exchangeable
    _, _, ratio = metrics.spread_skill(draws[:m], draws[m])
    np.testing.assert_allclose(float(ratio), 1.0, atol=0.03)
    _, _, under = metrics.spread_skill(center + 0.3 * (draws[:m] - center), draws[m])
    assert float(under) < 0.5


def test_rank_histogram_brier_reliability():
    rng = np.random.default_rng(3)
    center = rng.normal(size=10000)
    ens = center + rng.normal(size=(4, 10000))  # members and obs exchangeable
    obs = center + rng.normal(size=10000)
    ranks = metrics.rank_histogram(ens, obs)
    assert ranks.sum() == 10000 and len(ranks) == 5
    np.testing.assert_allclose(ranks / 10000, 0.2, atol=0.02)  # flat when exchangeable
    prob = np.asarray(metrics.exceedance_probability(jnp.asarray(ens), 0.5))
    event = obs >= 0.5
    np.testing.assert_allclose(metrics.brier_score(prob, event), np.mean((prob - event) ** 2))
    rel = metrics.reliability(prob, event, num_bins=5)
    assert rel["count"].sum() == 10000
    used = rel["count"] > 500
    # Informative members: the observed frequency rises with the forecast probability.
    assert used.sum() >= 4 and np.all(np.diff(rel["observed"][used]) > 0.05)
