"""Diffusion schedules, forward/posterior formulas and the three samplers on exact Gaussian data."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxlab.weather import diffusion

MU = jnp.array([1.5, -2.0, 0.0, 0.5])
STD = jnp.array([0.5, 1.0, 2.0, 0.1])


@pytest.mark.parametrize("kind", ["cosine", "linear"])
def test_schedule_endpoints_and_monotone(kind):
    s = diffusion.make_schedule(kind, 1000)
    abar = np.asarray(s.alpha_bars)
    assert abar.shape == (1000,)
    assert abar[0] > 0.999  # almost clean at t = 0
    assert abar[-1] < 1e-3  # almost pure noise at t = T - 1 (linear: 4e-5, cosine: ~0)
    assert np.all(np.diff(abar) < 0)
    assert np.all((np.asarray(s.betas) > 0) & (np.asarray(s.betas) <= 0.999))


def test_cosine_matches_closed_form():
    s = diffusion.make_schedule("cosine", 1000)
    t = np.arange(1, 1001) / 1000
    f = np.cos((t + 0.008) / 1.008 * np.pi / 2) ** 2 / np.cos(0.008 / 1.008 * np.pi / 2) ** 2
    # beta clipping at 0.999 only changes the last step or two.
    np.testing.assert_allclose(np.asarray(s.alpha_bars)[:990], f[:990], rtol=1e-4, atol=1e-6)


def test_q_sample_moments():
    s = diffusion.make_schedule("cosine", 1000)
    x0 = jnp.full((20000, 1), 2.0)
    t = jnp.full((20000,), 500)
    xt = diffusion.q_sample(s, x0, t, jax.random.normal(jax.random.key(0), x0.shape))
    abar = float(s.alpha_bars[500])
    np.testing.assert_allclose(float(xt.mean()), 2.0 * np.sqrt(abar), atol=0.03)
    np.testing.assert_allclose(float(xt.var()), 1 - abar, rtol=0.05)


def test_posterior_matches_bayes_rule():
    """q(x_{t-1}|x_t,x_0) from the product of the two Gaussians q(x_t|x_{t-1}) q(x_{t-1}|x_0)."""
    s = diffusion.make_schedule("linear", 1000)
    t = 300
    x0, xt = jnp.array([[0.7]]), jnp.array([[-0.4]])
    mean, var = diffusion.posterior(s, x0, xt, jnp.array([t]))
    a, beta, abar_prev = float(s.alphas[t]), float(s.betas[t]), float(s.alpha_bars[t - 1])
    prec = a / beta + 1 / (1 - abar_prev)
    expect_mean = (np.sqrt(a) * -0.4 / beta + np.sqrt(abar_prev) * 0.7 / (1 - abar_prev)) / prec
    np.testing.assert_allclose(float(mean[0, 0]), expect_mean, rtol=1e-4)
    np.testing.assert_allclose(float(var[0]), 1 / prec, rtol=1e-4)


def test_v_prediction_round_trip():
    s = diffusion.make_schedule("cosine", 1000)
    k1, k2 = jax.random.split(jax.random.key(1))
    x0, noise = jax.random.normal(k1, (3, 5)), jax.random.normal(k2, (3, 5))
    t = jnp.array([10, 500, 990])
    xt = diffusion.q_sample(s, x0, t, noise)
    v = diffusion.v_target(s, x0, t, noise)
    np.testing.assert_allclose(diffusion.eps_from_v(s, xt, t, v), noise, atol=1e-4)


def exact_eps(sched):
    """Exact noise predictor for x0 ~ N(MU, STD^2): E[eps | x_t]."""

    def eps_fn(x, t):
        abar = sched.alpha_bars[t]
        return jnp.sqrt(1 - abar) * (x - jnp.sqrt(abar) * MU) / (abar * STD**2 + 1 - abar)

    return eps_fn


@pytest.mark.parametrize(
    "method,steps,eta",
    [("dpm_solver_pp", 20, 0.0), ("ddim", 50, 0.0), ("ddim", 50, 1.0), ("ddpm", 0, 0.0)],
)
def test_samplers_match_gaussian_target(method, steps, eta):
    sched = diffusion.make_schedule("cosine", 1000)
    eps_fn = exact_eps(sched)
    n = 3000

    @jax.jit
    def draw(keys):
        return jax.vmap(lambda k: diffusion.sample(method, eps_fn, sched, MU.shape, k, steps, eta))(
            keys
        )

    keys = jax.random.split(jax.random.key(0), n)
    x = np.asarray(draw(keys))
    chex.assert_shape(x, (n, 4))
    np.testing.assert_allclose(x.mean(0), MU, atol=4 * float(STD.max()) / np.sqrt(n) + 0.02)
    np.testing.assert_allclose(x.std(0), STD, rtol=0.08)
    # Deterministic given the key (up to float reassociation between batch sizes).
    np.testing.assert_allclose(np.asarray(draw(keys[:5])), x[:5], atol=1e-5)


def test_samplers_fail_with_wrong_score():
    """The moment test can fail: a predictor for the wrong mean gives the wrong samples."""
    sched = diffusion.make_schedule("cosine", 1000)
    good = exact_eps(sched)
    wrong = lambda x, t: good(x - 1.0, t)  # noqa: E731
    keys = jax.random.split(jax.random.key(0), 500)
    x = jax.vmap(lambda k: diffusion.dpm_solver_pp_sample(wrong, sched, MU.shape, k, 20))(keys)
    assert np.abs(np.asarray(x).mean(0) - MU).max() > 0.5
