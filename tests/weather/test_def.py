"""DEF (perturbed_ensemble.py). Paper mode: the classifier-free guidance w of eq. P2 against the closed
form of Gaussian conditional / unconditional models (w = 1 samples the conditional, w = 0 the
unconditional, independent of the state), and every lead step of a rollout is perturbed.
Change mode: the noise level and the pull control the perturbation's size. The deterministic
forecaster is the network at step 0 on zeros."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxlab.configs import weather as weather_config
from jaxlab.core import mesh as mesh_lib
from jaxlab.core import rng
from jaxlab.weather import perturbed_ensemble, diffusion, steps
from jaxlab.weather import model as model_lib
from tests.weather.test_model import host_params

GRID = (4, 4, 7)
SCALE = {"std": jnp.ones((7,)), "mean": jnp.zeros((7,))}


def gaussian_eps(sched, mean, std):
    """Exact eps of x0 ~ N(mean, std^2): sqrt(1 - abar) (x - sqrt(abar) mean) / var_t."""

    def eps(x, t):
        abar = sched.alpha_bars[t]
        var = abar * std**2 + 1 - abar
        return jnp.sqrt(1 - abar) * (x - jnp.sqrt(abar) * mean) / var

    return eps


@functools.cache
def _guided_sampler():
    """jit(vmap) of eq. P1-P2 over keys, state and w traced: one compile for every call."""
    config = weather_config.get_config("tiny")
    config.diffusion.sample_steps, config.diffusion.min_alpha_bar = 20, 1e-4
    sched = diffusion.make_schedule("cosine", 1000)
    null = gaussian_eps(sched, 0.0, 1.0)

    def one(key, state, guidance):
        cond = gaussian_eps(sched, state, 0.3)
        pair = lambda x, t: (cond(x, t), null(x, t))  # noqa: E731
        return perturbed_ensemble.guided_sample(pair, sched, (3,), key, guidance, config)

    return jax.jit(jax.vmap(one, in_axes=(0, None, None)))


def guided_draws(state, guidance, n=2000):
    """[n, 3] draws of eq. P1-P2 with a Gaussian conditional N(state, 0.3^2) and unconditional
    N(0, 1) model (exact eps), 20 DPM-Solver++ steps from abar >= 1e-4."""
    keys = jax.random.split(jax.random.key(0), n)
    return np.asarray(_guided_sampler()(keys, jnp.asarray(state), jnp.float32(guidance)))


def test_guidance_limits_match_the_conditional_and_unconditional_closed_forms():
    """Eq. P2 with w = 1 samples N(state, 0.3^2), with w = 0 N(0, 1) whatever the state (bitwise:
    the conditional term is multiplied by 0); w = 0.5 lies between, and the perturbation (the
    distance of the draws from the state) grows as w falls."""
    state = np.array([0.8, -0.5, 0.0], np.float32)
    x1 = guided_draws(state, 1.0)
    np.testing.assert_allclose(x1.mean(0), state, atol=0.03)
    np.testing.assert_allclose(x1.std(0), 0.3, rtol=0.06)
    x0 = guided_draws(state, 0.0)
    np.testing.assert_allclose(x0.mean(0), 0.0, atol=0.07)
    np.testing.assert_allclose(x0.std(0), 1.0, rtol=0.06)
    np.testing.assert_array_equal(x0, guided_draws(-state, 0.0))
    half = guided_draws(state, 0.5)
    assert float(half.std(0).min()) > 0.3 and float(half.std(0).max()) < 1.0, half.std(0)
    assert 0.0 < half.mean(0)[0] < state[0], half.mean(0)
    distance = [float(np.abs(x - state).mean()) for x in (x1, half, x0)]
    assert distance[0] < distance[1] < distance[2], distance
    np.testing.assert_allclose(perturbed_ensemble.guided_eps(2.0, 1.0, 0.25), 1.25)


def test_perturbation_model_learns_the_state_given_itself_or_nothing():
    """The perturbation model's inputs: the sample is the state; the condition is the state, or
    zeros (the null condition) for about `cond_drop` of the examples, whole examples at once."""
    state = jax.random.normal(jax.random.key(0), (4000, 1, 1, 2))
    x0, cond = steps.perturbation_inputs({"cond": state}, jax.random.key(1), 0.1)
    np.testing.assert_array_equal(x0, state)
    dropped = np.asarray(jnp.all(cond == 0.0, axis=(1, 2, 3)))
    assert abs(dropped.mean() - 0.1) < 0.015, dropped.mean()
    np.testing.assert_array_equal(np.asarray(cond)[~dropped], np.asarray(state)[~dropped])


@functools.cache
def setup(level: int, mode: str = "change", walks: int = 1):
    config = weather_config.get_config("tiny")
    config.diffusion.sample_steps = 2
    config.eval.def_level = level
    config.eval.def_mode = mode
    config.eval.def_walks = walks
    model = model_lib.make_model(config)
    sched = diffusion.make_schedule("cosine", 1000)
    params, det_params = host_params(model, GRID, 0), host_params(model, GRID, 1)
    mesh = mesh_lib.make_mesh([("data", -1)], devices=jax.devices()[:1])
    fns = perturbed_ensemble.make_steps(model, model, sched, config, mesh, 4)
    return config, model, params, det_params, fns


def def_members(level: int, guidance: float, steps: int = 2, mode="change", walks=1):
    """[K, M, ...] DEF members and [K, 1, ...] deterministic forecast, tiny random networks."""
    config, _, params, det_params, fns = setup(level, mode, walks)
    gen = np.random.default_rng(0)
    prev, init = (jnp.asarray(0.5 * gen.normal(size=GRID), jnp.float32) for _ in range(2))
    key = rng.stream(config.seed, "def_noise", 0)
    scales = (SCALE, SCALE, jnp.float32(guidance))
    members, alone = perturbed_ensemble.rollout(
        fns, params, det_params, prev, init, 12.0, 1, key, 4, steps, scales, mode
    )
    return np.asarray(members), np.asarray(alone)


def spread(members):
    return float(members.std(1).mean())


@pytest.mark.slow
def test_def_perturbation_grows_with_level_and_shrinks_with_guidance():
    members0, alone = def_members(0, 0.0)
    # Level 0: no perturbation, every member is the deterministic forecast.
    np.testing.assert_allclose(members0, np.broadcast_to(alone, members0.shape), atol=1e-5)
    low, high = spread(def_members(100, 0.0)[0]), spread(def_members(600, 0.0)[0])
    assert 0.0 < low < high, (low, high)
    guided = spread(def_members(600, 0.8)[0])
    assert guided < 0.5 * high, (guided, high)
    # Full guidance returns the unperturbed state: DEF collapses to the deterministic forecast.
    full, alone = def_members(600, 1.0)
    np.testing.assert_allclose(full, np.broadcast_to(alone, full.shape), atol=1e-4)
    # Every lead step is perturbed: the second lead is not the deterministic map of the first.
    members, _ = def_members(600, 0.0)
    config, model, _, det_params, _ = setup(600)
    carried = perturbed_ensemble.deterministic(
        det_params, jnp.asarray(members[0]), jnp.ones(4), jnp.full((4,), 13.0), SCALE,
        model=model, config=config,
    )  # fmt: skip
    assert np.abs(np.asarray(carried) - members[1]).max() > 1e-3


@pytest.mark.slow
def test_paper_mode_perturbs_every_lead_step_and_walks_move_further():
    """Paper mode: members differ from one another at every lead, the second lead is not G of
    the first (perturbed again), and a second walk changes the members."""
    members, alone = def_members(0, 0.5, mode="paper")
    assert spread(members[:1]) > 1e-3 and spread(members[1:]) > 1e-3
    config, model, _, det_params, _ = setup(0, "paper")
    carried = perturbed_ensemble.deterministic(
        det_params, jnp.asarray(members[0]), jnp.ones(4), jnp.full((4,), 13.0), SCALE,
        model=model, config=config,
    )  # fmt: skip
    assert np.abs(np.asarray(carried) - members[1]).max() > 1e-3
    two, _ = def_members(0, 0.5, steps=1, mode="paper", walks=2)
    assert np.abs(two - members[:1]).max() > 1e-3
