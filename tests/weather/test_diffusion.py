"""Diffusion schedules, forward/posterior formulas and the three samplers on exact Gaussian data."""

import functools

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
    """From x_T ~ N(0, 1) at T - 1 (min_alpha_bar 0) with the quadratic spacing: the full range."""
    sched = diffusion.make_schedule("cosine", 1000)
    eps_fn = exact_eps(sched)
    n = 3000

    @jax.jit
    def draw(keys):
        return jax.vmap(
            lambda k: diffusion.sample(
                method, eps_fn, sched, MU.shape, k, steps, eta, spacing="quadratic"
            )
        )(keys)

    keys = jax.random.split(jax.random.key(0), n)
    x = np.asarray(draw(keys))
    chex.assert_shape(x, (n, 4))
    np.testing.assert_allclose(x.mean(0), MU, atol=4 * float(STD.max()) / np.sqrt(n) + 0.02)
    np.testing.assert_allclose(x.std(0), STD, rtol=0.08)
    # Deterministic given the key (up to float reassociation between batch sizes).
    np.testing.assert_allclose(np.asarray(draw(keys[:5])), x[:5], atol=1e-5)


def exact_map(sched, key):
    """Where the probability-flow ODE takes the prior draw of `key` for x0 ~ N(MU, STD^2):
    MU + STD z, z the standardised initial noise (the Gaussian flow is affine)."""
    z = jax.random.normal(jax.random.fold_in(key, diffusion.INIT_NOISE), MU.shape)
    return MU + STD * z


def test_twenty_steps_reproduce_gaussian_mean_and_std_within_2_percent():
    """From the true prior at abar >= 1e-2 (the demo's start), 20 DPM-Solver++ steps with the
    default log-SNR spacing move each draw to within 2% of the exact ODE map, for data stds
    0.1 to 2. The quadratic spacing is worse overall; trailing (diffusers) ends at t = T / M - 1
    and returns E[x0 | x_t] there, which loses a quarter of a narrow channel's std."""
    sched = diffusion.make_schedule("cosine", 1000)
    eps_fn = exact_eps(sched)
    keys = jax.random.split(jax.random.key(0), 500)  # per-draw errors: no sampling noise
    exact = np.asarray(jax.vmap(functools.partial(exact_map, sched))(keys))

    def rel_error(spacing):
        one = functools.partial(
            diffusion.dpm_solver_pp_sample,
            eps_fn,
            sched,
            MU.shape,
            num_steps=20,
            min_alpha_bar=1e-2,
            spacing=spacing,
            prior=(MU, STD),
        )
        x = np.asarray(jax.jit(jax.vmap(one))(keys))
        return x, np.sqrt(np.mean((x - exact) ** 2, 0)) / np.asarray(STD)

    x, err = rel_error("logsnr")
    np.testing.assert_allclose(x.mean(0), exact.mean(0), atol=0.02 * float(STD.max()))
    np.testing.assert_allclose(x.std(0), exact.std(0), rtol=0.02)
    assert float(err.max()) < 0.02, err
    assert float(rel_error("quadratic")[1].mean()) > 2 * float(err.mean())
    assert float(rel_error("trailing")[1][3]) > 0.1  # the std-0.1 channel


def test_prior_at_the_first_step_keeps_a_nonzero_mean():
    """N(0, 1) at abar ~ 1e-2 shrinks a mean of 1.5 by several percent; the prior does not."""
    sched = diffusion.make_schedule("cosine", 1000)
    eps_fn, keys = exact_eps(sched), jax.random.split(jax.random.key(3), 500)

    def mean(prior):
        one = functools.partial(
            diffusion.dpm_solver_pp_sample, eps_fn, sched, MU.shape, num_steps=20,
            min_alpha_bar=1e-2, prior=prior,
        )  # fmt: skip
        return np.asarray(jax.jit(jax.vmap(one))(keys)).mean(0)

    exact = np.asarray(jax.vmap(functools.partial(exact_map, sched))(keys)).mean(0)
    assert abs(mean((0.0, 1.0))[0] - exact[0]) > 0.03  # shrunk towards 0
    np.testing.assert_allclose(mean((MU, STD)), exact, atol=0.01)


def dpm_solver_2m_reference(eps_fn, alpha_bars, ts, x):
    """DPM-Solver++(2M) written from the published update (Lu et al. 2022, Algorithm 2, as in
    diffusers' `multistep_dpm_solver_second_order_update`, midpoint form, lower-order first and
    final steps, final sigma 0), in float64 numpy:
        D0 = m_s0, D1 = (m_s0 - m_s1) / r0, r0 = h_0 / h,
        x_t = sigma_t / sigma_s0 x - alpha_t (e^-h - 1) D0 - 0.5 alpha_t (e^-h - 1) D1."""
    abar = np.asarray(alpha_bars, np.float64)[ts]
    alpha, sigma = np.sqrt(abar), np.sqrt(1 - abar)
    lam = np.log(alpha / sigma)
    models = []
    for i, t in enumerate(ts):
        models.append((x - sigma[i] * eps_fn(x, t)) / alpha[i])
        if i == len(ts) - 1:  # first order to sigma = 0: x = alpha_0 * D, alpha_0 = 1
            return models[-1]
        h = lam[i + 1] - lam[i]
        x = sigma[i + 1] / sigma[i] * x - alpha[i + 1] * np.expm1(-h) * models[-1]
        if i > 0:
            r0 = (lam[i] - lam[i - 1]) / h
            d1 = (models[-1] - models[-2]) / r0
            x = x - 0.5 * alpha[i + 1] * np.expm1(-h) * d1


def test_dpm_solver_equals_the_published_2m_update():
    """Same timesteps, a non-linear eps: the sampler equals the reference re-derivation."""
    sched = diffusion.make_schedule("cosine", 1000)

    def eps_np(x, t):
        return 0.8 * np.tanh(x) + 0.05 * np.sin(t / 97.0) * x

    def eps_jax(x, t):
        return 0.8 * jnp.tanh(x) + 0.05 * jnp.sin(t / 97.0) * x

    key = jax.random.key(5)
    x_init = jax.random.normal(key, (6,))
    for spacing in ("trailing", "quadratic"):
        ts = diffusion.sampling_steps(sched, 12, spacing, None, 1e-2)
        got = diffusion.dpm_solver_pp_sample(
            eps_jax, sched, (6,), key, 12, x_init=x_init, min_alpha_bar=1e-2, spacing=spacing
        )
        want = dpm_solver_2m_reference(
            eps_np, np.asarray(sched.alpha_bars), ts, np.asarray(x_init, np.float64)
        )
        np.testing.assert_allclose(np.asarray(got), want, rtol=1e-4, atol=1e-4)


def test_spacings_start_at_the_first_step_and_decrease():
    sched = diffusion.make_schedule("cosine", 1000)
    abar = np.asarray(sched.alpha_bars)
    np.testing.assert_array_equal(
        diffusion.timesteps(1000, 10, "trailing"), [999, 899, 799, 699, 599, 499, 399, 299, 199, 99]
    )
    np.testing.assert_array_equal(
        diffusion.timesteps(1000, 4, "linspace"), [999, 749, 500, 250]
    )  # diffusers' linspace: round(linspace(0, 999, 5))[::-1][:-1]
    for spacing in diffusion.SPACINGS:
        ts = diffusion.timesteps(935, 50, spacing, abar)
        assert ts[0] == 934 and ts[-1] >= 0 and np.all(np.diff(ts) < 0), (spacing, ts)
    lam = 0.5 * np.log(abar / (1 - abar))
    ts = diffusion.timesteps(935, 8, "logsnr", abar)  # abar >= 1e-2: the demo range
    steps = np.diff(lam[ts])
    assert np.all(steps > 0) and steps.max() / steps.min() < 1.5  # uniform in log-SNR
    with pytest.raises(ValueError, match="spacing"):
        diffusion.timesteps(1000, 10, "cubic")


def test_samplers_fail_with_wrong_score():
    """The moment test can fail: a predictor for the wrong mean gives the wrong samples."""
    sched = diffusion.make_schedule("cosine", 1000)
    good = exact_eps(sched)
    wrong = lambda x, t: good(x - 1.0, t)  # noqa: E731
    keys = jax.random.split(jax.random.key(0), 500)
    x = jax.vmap(lambda k: diffusion.dpm_solver_pp_sample(wrong, sched, MU.shape, k, 20))(keys)
    assert np.abs(np.asarray(x).mean(0) - MU).max() > 0.5
