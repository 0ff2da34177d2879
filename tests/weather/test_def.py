"""DEF (def_ensemble.py): the noise level and the guidance control the perturbation's size, and
every lead step is perturbed; the deterministic forecaster is the network at step 0 on zeros."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxlab.configs import weather as weather_config
from jaxlab.core import mesh as mesh_lib
from jaxlab.core import rng
from jaxlab.weather import def_ensemble, diffusion
from jaxlab.weather import model as model_lib
from tests.weather.test_model import host_params

GRID = (4, 4, 7)
SCALE = {"std": jnp.ones((7,)), "mean": jnp.zeros((7,))}


@functools.cache
def setup(level: int):
    config = weather_config.get_config("tiny")
    config.diffusion.sample_steps = 2
    config.eval.def_level = level
    model = model_lib.make_model(config)
    sched = diffusion.make_schedule("cosine", 1000)
    params, det_params = host_params(model, GRID, 0), host_params(model, GRID, 1)
    mesh = mesh_lib.make_mesh([("data", -1)], devices=jax.devices()[:1])
    fns = def_ensemble.make_steps(model, model, sched, config, mesh, 4)
    return config, model, params, det_params, fns


def def_members(level: int, guidance: float, steps: int = 2):
    """[K, M, ...] DEF members and [K, 1, ...] deterministic forecast, tiny random networks."""
    config, _, params, det_params, fns = setup(level)
    gen = np.random.default_rng(0)
    prev, init = (jnp.asarray(0.5 * gen.normal(size=GRID), jnp.float32) for _ in range(2))
    key = rng.stream(config.seed, "def_noise", 0)
    scales = (SCALE, SCALE, jnp.float32(guidance))
    members, alone = def_ensemble.rollout(
        fns, params, det_params, prev, init, 12.0, 1, key, 4, steps, scales
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
    carried = def_ensemble.deterministic(
        det_params, jnp.asarray(members[0]), jnp.ones(4), jnp.full((4,), 13.0), SCALE,
        model=model, config=config,
    )  # fmt: skip
    assert np.abs(np.asarray(carried) - members[1]).max() > 1e-3
