"""CRPS against properscoring, the pairwise formula and the closed-form Gaussian CRPS; other scores.

properscoring is a test-only dependency: an independent implementation (it integrates the
empirical CDF) of the standard ensemble CRPS.
"""

import jax
import jax.numpy as jnp
import numpy as np
import properscoring
import pytest
from scipy import stats

from jaxlab.weather import metrics


def random_ensembles_with_ties(seed, members, points):
    """ens [M, N], obs [N] on a 0.5 grid: members tie with each other and with the observation."""
    rng = np.random.default_rng(seed)
    ens = np.round(2 * rng.normal(size=(members, points))) / 2
    obs = np.round(2 * rng.normal(size=points)) / 2
    ens[:, 0] = 1.0  # all members equal
    ens[:2, 1], obs[1] = obs[1], obs[1]  # two members equal to the observation
    return ens, obs


def fair_crps_pairwise(ens, obs):
    """Ferro (2014): mean_i |x_i - y| - sum_{i != j} |x_i - x_j| / (2 M (M - 1)), per point."""
    m = ens.shape[0]
    skill = np.abs(ens - obs[None]).mean(0)
    pairs = np.abs(ens[:, None] - ens[None, :]).sum(axis=(0, 1))  # i == j adds 0
    return skill - pairs / (2 * m * (m - 1))


@pytest.mark.parametrize("members,seed", [(2, 0), (5, 1), (8, 2), (16, 3)])
def test_crps_matches_properscoring_and_fair_crps_the_pairwise_form(members, seed):
    ens, obs = random_ensembles_with_ties(seed, members, 200)
    assert len(np.unique(ens[:, 2:])) < ens[:, 2:].size / 4  # many ties
    got = np.asarray(metrics.crps_ensemble(jnp.asarray(ens), jnp.asarray(obs)))
    want = properscoring.crps_ensemble(obs, ens.T)  # members on its last axis
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    fair = np.asarray(metrics.crps_ensemble(jnp.asarray(ens), jnp.asarray(obs), fair=True))
    np.testing.assert_allclose(fair, fair_crps_pairwise(ens, obs), rtol=1e-5, atol=1e-6)
    # All members equal: both scores are |x - y|.
    np.testing.assert_allclose(got[0], abs(1.0 - obs[0]), rtol=1e-6)
    np.testing.assert_allclose(fair[0], abs(1.0 - obs[0]), rtol=1e-6)


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


def test_rank_flatness_against_hand_values():
    """Flat: chi2 0, KL 0, offset 0; all mass in bin 0 of 9: KL log 9, offset -4, chi2 N (B - 1)."""
    flat = metrics.rank_flatness(np.full(9, 10))
    assert flat == pytest.approx({"chi2": 0.0, "rel_entropy": 0.0, "mean_offset": 0.0}, abs=1e-12)
    low = metrics.rank_flatness(np.array([90, 0, 0, 0, 0, 0, 0, 0, 0]))
    assert low["rel_entropy"] == pytest.approx(np.log(9))
    assert low["mean_offset"] == pytest.approx(-4.0)
    assert low["chi2"] == pytest.approx(90 * 8)
    # The u10 histogram: the observation below every member 97% of the time.
    u10 = metrics.rank_flatness([11916, 314, 41, 15, 2, 0, 0, 0, 0])
    assert u10["mean_offset"] < -3.9 and u10["rel_entropy"] > 2.0
