"""U-Nets: the seed's parameter count, shapes on odd grids, conditioning; ensemble keys."""

import chex
import jax
import jax.numpy as jnp
import numpy as np

from jaxlab.configs import weather as weather_config
from jaxlab.core import mesh as mesh_lib
from jaxlab.core import rng
from jaxlab.weather import diffusion, ensemble
from jaxlab.weather import model as model_lib


def _count(model, shape):
    params = jax.eval_shape(lambda: model_lib.init_params(model, jax.random.key(0), shape))
    return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(params))


def host_params(model, grid, seed=0):
    """Random params of the model's shapes, drawn on the host (N(0, 1 / fan_in) per leaf).

    Compiling flax's init under jit (threefry for every leaf) costs more than the network itself
    on a loaded CPU; what these tests check does not depend on the initialiser.
    """
    shapes = jax.eval_shape(lambda: model_lib.init_params(model, jax.random.key(0), grid))
    gen = np.random.default_rng(seed)

    def draw(leaf):
        fan_in = max(int(np.prod(leaf.shape[:-1])), 1)
        return (gen.normal(size=leaf.shape) / np.sqrt(fan_in)).astype(np.float32)

    return jax.tree.map(draw, shapes)


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
    config = weather_config.get_config("paper")
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
    x = jax.random.normal(jax.random.key(1), (2, 8, 8, 7))
    base, other_t, other_c = apply_three(model, host_params(model, (8, 8, 7)), x)
    assert float(jnp.abs(base - other_t).max()) > 1e-4
    assert float(jnp.abs(base - other_c).max()) > 1e-4
    # The demo's residual variant (skips, 1x1 shortcut convs, 3x3 conv-out; model.py docstring).
    demo = model_lib.make_model(weather_config.get_config("demo"))
    assert _count(demo, (32, 32, 7)) == 84_839


def apply_three(model, params, x):
    """One compiled call on x [B, ...]: the reference output, another diffusion step, another
    condition (x + 1)."""
    b = x.shape[0]
    t = jnp.concatenate([jnp.arange(b) * 37 + 10, jnp.full((b,), 500), jnp.arange(b) * 37 + 10])
    xt, cond = jnp.concatenate([x, x, x]), jnp.concatenate([x, x, x + 1.0])
    out = jax.jit(model.apply)({"params": params}, xt, cond, t, jnp.ones(3 * b))
    return jnp.split(out, 3)


def test_unet_pads_odd_grids_and_uses_its_inputs():
    """An odd 5 x 7 grid is padded to 6 x 8 inside and cropped back."""
    config = weather_config.get_config("tiny")
    config.model.name = "unet"
    config.model.base_dim = 8
    config.model.channel_mults = (1, 2)
    model = model_lib.make_model(config)
    x = jax.random.normal(jax.random.key(1), (2, 5, 7, 7))
    out, other_t, other_c = apply_three(model, host_params(model, (5, 7, 7)), x)
    chex.assert_shape(out, (2, 5, 7, 7))
    assert np.all(np.isfinite(np.asarray(out)))
    # The diffusion step and the condition both change the output.
    assert float(jnp.abs(out - other_t).max()) > 1e-4
    assert float(jnp.abs(out - other_c).max()) > 1e-4


def test_members_do_not_depend_on_ensemble_size_or_devices():
    """Member m of a 4-member ensemble on 2 devices is member m of a 2-member one on 1 device, at
    both lead steps of the rollout (keys fold_in(case_key, member), then the lead step)."""
    config = weather_config.get_config("tiny")
    config.diffusion.sample_steps = 3
    model = model_lib.make_model(config)
    sched = diffusion.make_schedule("cosine", 1000)
    params = host_params(model, (4, 4, 7))
    init = jax.random.normal(jax.random.key(2), (4, 4, 7))
    scale = {"std": jnp.full((7,), 0.5), "mean": jnp.zeros((7,))}
    case_key = rng.stream(config.seed, "ensemble", 0)
    runs = {}
    for members, devices in ((4, jax.devices()[:2]), (2, jax.devices()[:1])):
        mesh = mesh_lib.make_mesh([("data", -1)], devices=devices)
        step = ensemble.make_forecast_step(model, sched, config, mesh, members)
        runs[members] = np.asarray(
            ensemble.rollout(step, params, init, 1, 12.0, case_key, members, 2, scale)
        )
    chex.assert_shape(runs[4], (2, 4, 4, 4, 7))
    np.testing.assert_allclose(runs[4][:, :2], runs[2], rtol=1e-5, atol=1e-5)
    assert np.abs(runs[4][:, 0] - runs[4][:, 1]).max() > 1e-2  # members differ
    assert np.abs(runs[4][0] - runs[4][1]).max() > 1e-2  # lead steps draw new noise
    # Another case draws other members.
    other = ensemble.rollout(
        step, params, init, 1, 12.0, rng.stream(config.seed, "ensemble", 1), 2, 1, scale
    )
    assert np.abs(np.asarray(other)[0] - runs[2][0]).max() > 1e-2


def test_hour_of_day_enters_the_network_periodically():
    """6 h and 18 h (morning, evening) give different outputs; 0 h and 24 h the same."""
    config = weather_config.get_config("tiny")
    model = model_lib.make_model(config)
    params = host_params(model, (4, 4, 7))
    x = jnp.broadcast_to(jax.random.normal(jax.random.key(3), (1, 4, 4, 7)), (4, 4, 4, 7))
    hours = jnp.array([6.0, 18.0, 0.0, 24.0])
    apply = jax.jit(model_lib.apply, static_argnums=(0, 7))  # one compile, not one per op
    out = apply(model, params, x, x, jnp.full((4,), 300), jnp.ones(4), hours, True)
    assert float(jnp.abs(out[0] - out[1]).max()) > 1e-4
    np.testing.assert_allclose(out[2], out[3], atol=1e-5)
    off = apply(model, params, x, x, jnp.full((4,), 300), jnp.ones(4), hours, False)
    np.testing.assert_allclose(off[0], off[1], atol=1e-6)
