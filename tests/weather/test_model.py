"""U-Nets: the seed's parameter count, shapes on odd grids, conditioning; ensemble keys."""

import chex
import jax
import jax.numpy as jnp
import numpy as np

from jaxlab.configs import weather as weather_config
from jaxlab.core import mesh as mesh_lib
from jaxlab.weather import diffusion, ensemble
from jaxlab.weather import model as model_lib


def _count(model, shape):
    params = jax.eval_shape(lambda: model_lib.init_params(model, jax.random.key(0), shape))
    return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(params))


def seed_param_count(in_channels: int, out_channels: int, d: int) -> int:
    """The seed's `UltraMinimalDDPM` (PyTorch) counted layer by layer: time MLP Linear(d, 4d),
    Linear(4d, 4d); six ConvBlocks (two 3x3 convs, two GroupNorms, Linear(4d, out)); 1x1 out."""

    def block(cin, cout):
        return (cin * 9 + 1) * cout + (cout * 9 + 1) * cout + 4 * cout + (4 * d + 1) * cout

    widths = [(in_channels, d), (d, 2 * d), (2 * d, 2 * d), (2 * d, 2 * d), (2 * d, d), (d, d)]
    time_mlp = (d + 1) * 4 * d + (4 * d + 1) * 4 * d
    return time_mlp + sum(block(a, b) for a, b in widths) + (d + 1) * out_channels


def test_minimal_unet_is_the_seeds_81k_network_at_full_resolution():
    assert seed_param_count(7, 7, 16) == 81_111  # the seed's "about 81K" (7 input channels)
    config = weather_config.get_config("fullres_minimal")
    model = model_lib.make_model(config)
    n = _count(model, (1059, 1799, 7))  # eval_shape: nothing is allocated
    # + 7 condition channels on the first conv: 7 * 16 * 9 = 1,008 weights.
    assert n == seed_param_count(14, 7, 16) == 82_119, n
    out = jax.eval_shape(
        lambda p, x: model.apply({"params": p}, x, x, jnp.zeros(1, jnp.int32), jnp.ones(1)),
        jax.eval_shape(lambda: model_lib.init_params(model, jax.random.key(0), (8, 8, 7))),
        jax.ShapeDtypeStruct((1, 1059, 1799, 7), jnp.float32),
    )
    assert out.shape == (1, 1059, 1799, 7)
    # On a small grid: the diffusion step and the condition both change the output.
    params = jax.jit(lambda k: model_lib.init_params(model, k, (8, 8, 7)))(jax.random.key(0))
    apply = jax.jit(lambda xt, c, t: model.apply({"params": params}, xt, c, t, jnp.ones(2)))
    x = jax.random.normal(jax.random.key(1), (2, 8, 8, 7))
    base = apply(x, x, jnp.array([10, 900]))
    assert float(jnp.abs(base - apply(x, x, jnp.array([500, 500]))).max()) > 1e-4
    assert float(jnp.abs(base - apply(x, x + 1.0, jnp.array([10, 900]))).max()) > 1e-4
    # The demo's residual variant (skips, 1x1 shortcut convs, 3x3 conv-out; model.py docstring).
    demo = model_lib.make_model(weather_config.get_config("demo"))
    assert _count(demo, (32, 32, 7)) == 84_839


def test_unet_pads_odd_grids_and_uses_its_inputs():
    config = weather_config.get_config("tiny")
    config.model.name = "unet"
    config.model.base_dim = 8
    config.model.channel_mults = (1, 2)
    model = model_lib.make_model(config)
    params = jax.jit(lambda k: model_lib.init_params(model, k, (9, 13, 7)))(jax.random.key(0))
    apply = jax.jit(lambda xt, c, t: model.apply({"params": params}, xt, c, t, jnp.ones(2)))
    x = jax.random.normal(jax.random.key(1), (2, 9, 13, 7))
    t = jnp.array([10, 900])
    out = apply(x, x, t)
    chex.assert_shape(out, (2, 9, 13, 7))
    # The diffusion step and the condition both change the output.
    other_t = apply(x, x, jnp.array([500, 500]))
    other_c = apply(x, x + 1.0, t)
    assert float(jnp.abs(out - other_t).max()) > 1e-4
    assert float(jnp.abs(out - other_c).max()) > 1e-4


def test_members_do_not_depend_on_ensemble_size_or_devices():
    config = weather_config.get_config("tiny")
    model = model_lib.make_model(config)
    sched = diffusion.make_schedule("cosine", 1000)
    params = jax.jit(lambda k: model_lib.init_params(model, k, (8, 8, 7)))(jax.random.key(0))
    init = jax.random.normal(jax.random.key(2), (8, 8, 7))
    res_std = jnp.full((7,), 0.5)
    root = jax.random.key(3)
    runs = {}
    for members, devices in ((8, jax.devices()), (4, jax.devices()[:1])):
        mesh = mesh_lib.make_mesh([("data", -1)], devices=devices)
        step = ensemble.make_forecast_step(model, sched, config, mesh, members)
        runs[members] = np.asarray(
            ensemble.rollout(step, params, init, 1, root, 0, members, 2, res_std)
        )
    chex.assert_shape(runs[8], (2, 8, 8, 8, 7))
    np.testing.assert_allclose(runs[8][:, :4], runs[4], rtol=1e-3, atol=1e-2)
    assert np.abs(runs[8][:, 0] - runs[8][:, 1]).max() > 1e-3  # members differ
