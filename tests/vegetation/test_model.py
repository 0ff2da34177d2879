"""Model pieces: Fourier synthesis against a direct sum, init, shapes, persistence at init."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxlab.core import optim
from jaxlab.vegetation import model as model_lib
from jaxlab.vegetation import steps
from tests.vegetation import helpers


def test_fourier_synthesis_matches_direct_sum():
    rng = np.random.default_rng(0)
    b, h, w, c, k, t = 2, 3, 2, 4, 3, 5
    coeffs = rng.normal(size=(b, h, w, c, 2 * k)).astype(np.float32)
    doy = rng.uniform(1, 365, size=(b, t)).astype(np.float32)
    got = np.asarray(model_lib.fourier_synthesis(jnp.asarray(coeffs), jnp.asarray(doy)))
    expected = np.zeros((b, t, h, w, c))
    for bi in range(b):
        for ti in range(t):
            for j in range(1, k + 1):
                angle = 2 * np.pi * j * doy[bi, ti] / 365.25
                expected[bi, ti] += coeffs[bi, ..., j - 1] * np.cos(angle)
                expected[bi, ti] += coeffs[bi, ..., k + j - 1] * np.sin(angle)
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4)


@pytest.fixture(scope="module")
def tiny_model():
    config = helpers.tiny_config()
    model = model_lib.make_model(config)
    batch = jax.tree.map(jnp.asarray, steps.random_batch(config, batch_size=2))
    params = jax.jit(model.init)(jax.random.key(0), batch)["params"]
    return model, params, batch


def test_model_init_shapes_and_coeff_scale(tiny_model):
    model, params, batch = tiny_model
    assert float(params["coeff_scale"]) == np.float32(0.1)
    # coeff_scale is a scalar, so the optimizer's weight-decay mask leaves it alone (no L2).
    assert not optim.weight_decay_mask(params)["coeff_scale"]
    assert len([k for k in params["Encoder_0"] if k.startswith("convlstm_")]) == 3
    out = jax.jit(model.apply)({"params": params}, batch)
    assert out.shape == (2, 20, 16, 16, 4) and out.dtype == jnp.float32


def test_output_depends_on_weather_and_day_of_year(tiny_model):
    model, params, batch = tiny_model
    # Make the (zero-initialised) weather head non-trivial.
    params = jax.tree_util.tree_map_with_path(
        lambda p, x: x + 0.1 if "weather_1" in jax.tree_util.keystr(p) else x, params
    )
    apply = jax.jit(model.apply)
    base = apply({"params": params}, batch)
    other = dict(batch, weather=batch["weather"] + 1.0)
    assert float(jnp.abs(apply({"params": params}, other) - base).max()) > 1e-4
    other = dict(batch, target_doy=batch["target_doy"] + 90.0)
    assert float(jnp.abs(apply({"params": params}, other) - base).max()) > 1e-5
