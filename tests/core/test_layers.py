"""Tests for jaxlab.core.layers: the convolution's weight gradient and GroupNorm (+ SiLU), against
XLA / flax and float64 numpy formulas."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from jaxlab.core import layers

SHAPE = (2, 3, 4, 8)  # [B, H, W, C]


def _inputs(shape=SHAPE, seed=0):
    """x with a large mean (the one-pass variance's weak spot), scale, bias and a cotangent."""
    kx, ks, kb, kg = jax.random.split(jax.random.key(seed), 4)
    c = shape[-1]
    x = 3.0 + 2.0 * jax.random.normal(kx, shape)
    scale = 1.0 + 0.3 * jax.random.normal(ks, (c,))
    bias = 0.3 * jax.random.normal(kb, (c,))
    g = jax.random.normal(kg, shape)
    return x, scale, bias, g


def np_group_norm(x, scale, bias, groups, eps=1e-6, silu=False):
    """float64 [B, ..., C]: two-pass mean and variance per example and group."""
    x = np.asarray(x, np.float64)
    b, c = x.shape[0], x.shape[-1]
    xg = x.reshape(b, -1, groups, c // groups)
    mean = xg.mean(axis=(1, 3), keepdims=True)
    var = ((xg - mean) ** 2).mean(axis=(1, 3), keepdims=True)
    y = ((xg - mean) / np.sqrt(var + eps)).reshape(x.shape)
    y = y * np.asarray(scale, np.float64) + np.asarray(bias, np.float64)
    return y / (1.0 + np.exp(-y)) if silu else y


def np_numeric_grads(x, scale, bias, g, groups, silu):
    """Central differences in float64 of sum(g * f(x, scale, bias)), every coordinate."""
    args = [np.asarray(a, np.float64) for a in (x, scale, bias)]
    g = np.asarray(g, np.float64)

    def loss(x, s, b):
        return np.sum(g * np_group_norm(x, s, b, groups, silu=silu))

    grads = []
    for i, arg in enumerate(args):
        grad = np.zeros_like(arg)
        for idx in np.ndindex(arg.shape):
            plus, minus = [a.copy() for a in args], [a.copy() for a in args]
            plus[i][idx] += 1e-6
            minus[i][idx] -= 1e-6
            grad[idx] = (loss(*plus) - loss(*minus)) / 2e-6
        grads.append(grad)
    return grads


def _apply(module, params, x):
    return module.apply({"params": params}, x)


@pytest.mark.parametrize("activation", [None, "silu"])
@pytest.mark.parametrize("groups", [8, 2])
def test_group_norm_matches_flax_values_and_gradients(activation, groups):
    x, scale, bias, g = _inputs()
    params = {"scale": scale, "bias": bias}
    act = nn.silu if activation else (lambda y: y)

    def flax_loss(params, x):
        return jnp.sum(g * act(_apply(nn.GroupNorm(groups), params, x)))

    def ours_loss(params, x):
        return jnp.sum(g * _apply(layers.GroupNorm(groups, activation=activation), params, x))

    ours = jax.jit(lambda p, x: _apply(layers.GroupNorm(groups, activation=activation), p, x))
    want = act(_apply(nn.GroupNorm(groups), params, x))
    np.testing.assert_allclose(ours(params, x), want, atol=1e-5, rtol=1e-5)
    got_grads = jax.jit(jax.grad(ours_loss, argnums=(0, 1)))(params, x)
    want_grads = jax.jit(jax.grad(flax_loss, argnums=(0, 1)))(params, x)
    for got, want in zip(jax.tree.leaves(got_grads), jax.tree.leaves(want_grads), strict=True):
        np.testing.assert_allclose(got, want, atol=2e-5, rtol=1e-4)


@pytest.mark.parametrize("activation", [None, "silu"])
def test_group_norm_matches_float64_formula(activation):
    """Values and gradients (x, scale, bias) against float64 numpy and its central differences."""
    shape, groups = (2, 2, 3, 4), 2
    x, scale, bias, g = _inputs(shape, seed=1)
    silu = activation == "silu"
    module = layers.GroupNorm(groups, activation=activation)
    got = jax.jit(lambda p, x: _apply(module, p, x))({"scale": scale, "bias": bias}, x)
    np.testing.assert_allclose(got, np_group_norm(x, scale, bias, groups, silu=silu), atol=2e-6)

    def loss(x, scale, bias):
        return jnp.sum(g * _apply(module, {"scale": scale, "bias": bias}, x))

    got_grads = jax.jit(jax.grad(loss, argnums=(0, 1, 2)))(x, scale, bias)
    want_grads = np_numeric_grads(x, scale, bias, g, groups, silu)
    for name, got, want in zip(("x", "scale", "bias"), got_grads, want_grads, strict=True):
        np.testing.assert_allclose(got, want, atol=1e-4, rtol=1e-4, err_msg=name)


def test_group_norm_silu_gradient_equals_autodiff_of_the_same_forward():
    """The closed-form backward equals autodiff through group_norm + silu (any rank: [B, T, C])."""
    x, scale, bias, g = _inputs((3, 10, 12), seed=2)

    def closed(x, s, b):
        return jnp.sum(g * layers.group_norm_silu(x, s, b, 4))

    def autodiff(x, s, b):
        return jnp.sum(g * nn.silu(layers.group_norm(x, s, b, 4)))

    got = jax.jit(jax.grad(closed, argnums=(0, 1, 2)))(x, scale, bias)
    want = jax.jit(jax.grad(autodiff, argnums=(0, 1, 2)))(x, scale, bias)
    for a, b in zip(got, want, strict=True):
        np.testing.assert_allclose(a, b, atol=2e-5, rtol=1e-4)


class _Block(nn.Module):
    """conv -> norm -> silu, the weather blocks' pattern, with a swappable norm."""

    norm: str

    @nn.compact
    def __call__(self, x):
        h = nn.Conv(8, (3, 3))(x)
        if self.norm == "flax":
            return nn.silu(nn.GroupNorm(4)(h))
        return layers.GroupNorm(4, activation="silu")(h)


def test_drop_in_keeps_the_parameter_tree_and_outputs():
    """Same names, shapes and init as flax: a checkpoint of one network loads into the other."""
    x = jax.random.normal(jax.random.key(3), (1, 5, 6, 3))
    flax_params = jax.jit(_Block("flax").init)(jax.random.key(4), x)
    ours_params = jax.jit(_Block("ours").init)(jax.random.key(4), x)
    assert jax.tree.map(np.shape, flax_params) == jax.tree.map(np.shape, ours_params)
    assert "GroupNorm_0" in ours_params["params"]
    for a, b in zip(jax.tree.leaves(flax_params), jax.tree.leaves(ours_params), strict=True):
        np.testing.assert_array_equal(a, b)
    got = jax.jit(_Block("ours").apply)(flax_params, x)
    np.testing.assert_allclose(got, jax.jit(_Block("flax").apply)(flax_params, x), atol=1e-5)


def test_dtype_follows_flax():
    x = jnp.ones((1, 2, 2, 8), jnp.bfloat16)
    params = {"scale": jnp.ones((8,)), "bias": jnp.zeros((8,))}
    for dtype in (None, jnp.bfloat16, jnp.float32):
        want = _apply(nn.GroupNorm(8, dtype=dtype), params, x).dtype
        for activation in (None, "silu"):
            got = _apply(layers.GroupNorm(8, dtype=dtype, activation=activation), params, x).dtype
            assert got == want, (dtype, activation)


def test_bad_arguments_raise():
    x = jnp.ones((1, 2, 2, 6))
    with pytest.raises(ValueError, match="groups"):
        layers.GroupNorm(4).init(jax.random.key(0), x)
    with pytest.raises(ValueError, match="activation"):
        layers.GroupNorm(2, activation="gelu").init(jax.random.key(0), x)


# --- convolution -----------------------------------------------------------------------------

NHWC = ("NHWC", "HWIO", "NHWC")


def np_conv_weight_grad(x, dy, kernel_shape, pads):
    """float64: dk[i, j] = sum over b, h, w of xpad[b, h + i, w + j, :]^T dy[b, h, w, :]."""
    kh, kw, _, _ = kernel_shape
    xp = np.pad(np.asarray(x, np.float64), ((0, 0), *pads, (0, 0)))
    dy = np.asarray(dy, np.float64)
    _, ho, wo, _ = dy.shape
    dk = np.zeros(kernel_shape)
    for i in range(kh):
        for j in range(kw):
            dk[i, j] = np.einsum("bhwc,bhwd->cd", xp[:, i : i + ho, j : j + wo], dy)
    return dk


# (H, W, Cin, Cout, k, padding, explicit pads): H 8 -> blocks of 4 rows, 9 -> 3, 7 -> 1.
CONV_CASES = [
    (8, 6, 5, 7, 3, "SAME", ((1, 1), (1, 1))),
    (9, 5, 4, 6, 3, "SAME", ((1, 1), (1, 1))),
    (7, 6, 3, 4, 1, "SAME", ((0, 0), (0, 0))),
    (7, 5, 3, 2, 3, ((2, 0), (1, 1)), ((2, 0), (1, 1))),
    (6, 7, 3, 2, 5, "VALID", ((0, 0), (0, 0))),
]


@pytest.mark.parametrize("case", CONV_CASES)
def test_conv_equals_xla_and_float64_weight_gradient(case):
    h, w, cin, cout, k, padding, pads = case
    kx, kk, kg = jax.random.split(jax.random.key(5), 3)
    x = jax.random.normal(kx, (2, h, w, cin))
    kernel = jax.random.normal(kk, (k, k, cin, cout)) / k

    def xla(x, kernel):
        return lax.conv_general_dilated(x, kernel, (1, 1), padding, dimension_numbers=NHWC)

    def ours(x, kernel):
        return layers.conv_general_dilated(x, kernel, (1, 1), padding, dimension_numbers=NHWC)

    g = jax.random.normal(kg, jax.eval_shape(xla, x, kernel).shape)

    @jax.jit
    def value_and_grads(x, kernel):
        """(y, dx, dk) of ours and XLA's, in one compiled function."""
        out = []
        for f in (ours, xla):
            y, vjp = jax.vjp(f, x, kernel)
            out.append((y, *vjp(g)))
        return out

    (y, dx, dk), (want_y, want_dx, want_dk) = value_and_grads(x, kernel)
    np.testing.assert_array_equal(y, want_y)  # the forward is XLA's own
    np.testing.assert_array_equal(dx, want_dx)  # the input gradient too
    np.testing.assert_allclose(dk, want_dk, atol=1e-4, rtol=1e-5)
    np.testing.assert_allclose(dk, np_conv_weight_grad(x, g, kernel.shape, pads), atol=1e-4)


def test_conv_falls_back_to_xla_outside_its_case():
    """Strides (or dilation, groups, other layouts) go to lax.conv_general_dilated unchanged."""
    x = jax.random.normal(jax.random.key(6), (1, 8, 8, 4))
    kernel = jax.random.normal(jax.random.key(7), (3, 3, 4, 4))
    args = ((2, 2), "SAME")
    jaxpr = str(
        jax.make_jaxpr(lambda x, k: layers.conv_general_dilated(x, k, *args, None, None, NHWC))(
            x, kernel
        )
    )
    assert "custom_vjp" not in jaxpr
    got = layers.conv_general_dilated(x, kernel, *args, dimension_numbers=NHWC)
    np.testing.assert_array_equal(
        got, lax.conv_general_dilated(x, kernel, *args, dimension_numbers=NHWC)
    )


def test_flax_conv_with_it_keeps_params_and_values():
    x = jax.random.normal(jax.random.key(8), (2, 8, 6, 3))
    ref = nn.Conv(5, (3, 3))
    ours = nn.Conv(5, (3, 3), conv_general_dilated=layers.conv_general_dilated)
    params = jax.jit(ref.init)(jax.random.key(9), x)
    assert "custom_vjp" in str(jax.make_jaxpr(ours.apply)(params, x))  # flax takes our path
    assert jax.tree.map(np.shape, jax.jit(ours.init)(jax.random.key(9), x)) == jax.tree.map(
        np.shape, params
    )

    def loss(module):
        return jax.jit(jax.grad(lambda p: jnp.sum(jnp.sin(module.apply(p, x)))))(params)

    for a, b in zip(jax.tree.leaves(loss(ours)), jax.tree.leaves(loss(ref)), strict=True):
        np.testing.assert_allclose(a, b, atol=1e-4, rtol=1e-5)


def test_weight_gradient_is_chosen_per_platform_inside_the_lowered_program():
    """One exported program carries the blocked weight gradient for CPU only (lowered here for
    CUDA it is XLA's own), and both branches agree to float32 rounding."""

    def loss(kernel, x):
        y = layers.conv_general_dilated(x, kernel, (1, 1), "SAME", dimension_numbers=layers._NHWC)
        return jnp.sum(jnp.sin(y))

    grad = jax.jit(jax.grad(loss))
    args = (
        jax.ShapeDtypeStruct((3, 3, 4, 8), jnp.float32),
        jax.ShapeDtypeStruct((2, 8, 8, 4), jnp.float32),
    )
    cpu = jax.export.export(grad, platforms=("cpu",))(*args).mlir_module()
    cuda = jax.export.export(grad, platforms=("cuda",))(*args).mlir_module()
    assert "blocked_im2col_weight_grad" in cpu and "blocked_im2col_weight_grad" not in cuda
    assert cuda.count("stablehlo.convolution") == cpu.count("stablehlo.convolution") + 1

    kx, kk, kg = jax.random.split(jax.random.key(0), 3)
    x = jax.random.normal(kx, (2, 8, 8, 4))
    kernel = jax.random.normal(kk, (3, 3, 4, 8))
    dy = jax.random.normal(kg, (2, 8, 8, 8))
    pads = ((1, 1), (1, 1))
    blocked = layers.conv_weight_grad(x, dy, kernel.shape, pads)
    np.testing.assert_allclose(
        layers.xla_weight_grad(x, dy, kernel, pads), blocked, rtol=1e-5, atol=1e-4
    )
    # Both platforms in one program: the CPU branch runs here.
    both = jax.export.export(grad, platforms=("cpu", "cuda"))(*args)
    np.testing.assert_allclose(both.call(kernel, x), grad(kernel, x), rtol=1e-6, atol=1e-6)
