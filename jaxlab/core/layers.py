"""Convolution and GroupNorm (+ SiLU) for channels-last convolutional networks on CPU.

`conv_general_dilated`: XLA CPU computes a convolution's weight gradient as a convolution whose
window is the whole image ([B, H, W, Cin] x [B, H, W, Cout] -> [kh, kw, Cin, Cout], contracting
over B, H and W, with the batch as its feature axis) after two re-layout transposes of the
activations; at the weather networks' shapes that costs 3-5x the forward convolution of the same
layer. Here the forward pass and the input gradient stay XLA's convolutions, and the weight
gradient is a loop over blocks of a few output rows: each block's im2col patches
[B * R * W, kh * kw * Cin] are built in cache and contracted with the block's output gradient in
one small matrix product, accumulated in float32 (CPU time of a 3x3 32 -> 32 weight gradient at
[2, 256, 384]: 61 ms instead of 104 ms; the seed weather network's train step is 1.45x faster).
Same parameters, same values to float32 rounding; with flax:
`nn.Conv(..., conv_general_dilated=layers.conv_general_dilated)`.

The blocked weight gradient is chosen per platform inside the lowered program
(`jax.lax.platform_dependent(cpu=blocked, default=XLA's)`), not by the process's default backend
at trace time: a step lowered on this CPU machine for CUDA or TPU (`jax.export`) carries XLA's own
weight gradient (cuDNN's on GPU), and a CPU lowering carries the blocked one, visible in the
module as the private function `blocked_im2col_weight_grad` (tests/core/test_lowering.py).

`GroupNorm`: the statistics in one float32 pass (mean and mean of squares over [B, ..., G, C/G]
together) and the normalisation as one multiply-add per element, y = x * a + b with
a = scale * rstd and b = bias - mean * a per (batch, channel), which XLA fuses with the SiLU
and the consumer; `activation="silu"` adds the textbook closed-form backward of the pair
(`group_norm_silu`: one reduction pass for two [B, C] sums and one elementwise pass for dx,
recomputing the normalised value from x instead of storing it). Measured on this project's CPU
it is on par with flax's GroupNorm + SiLU within noise (0-4% of the seed weather step, whose
time is in its convolutions): a drop-in, not a speed-up by itself.

`GroupNorm` is a drop-in for `flax.linen.GroupNorm(num_groups, epsilon, dtype, param_dtype)`: same
class name (flax names it `GroupNorm_0`, ...), same parameters `scale` [C] and `bias` [C], so a
module that swaps one for the other keeps the parameter tree of its checkpoints and bundles
bit for bit. Values equal flax's to float32 rounding (tests/core/test_layers.py).

Shapes: x [B, ..., C] (any number of spatial axes; statistics over all of them and the C / G
channels of a group, per example); scale, bias [C]; mean, rstd [B, G].
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

_NHWC = ("NHWC", "HWIO", "NHWC")


def group_stats(x: jax.Array, num_groups: int, epsilon: float) -> tuple[jax.Array, jax.Array]:
    """Per-example, per-group mean and 1 / sqrt(var + epsilon), float32, one pass over x.

    x [B, ..., C] -> mean, rstd [B, G]. The variance is E[x^2] - E[x]^2 (clamped at 0), the same
    one-pass formula as flax's default `use_fast_variance=True`.
    """
    b, c = x.shape[0], x.shape[-1]
    xg = x.astype(jnp.float32).reshape(b, -1, num_groups, c // num_groups)
    mean = jnp.mean(xg, axis=(1, 3))
    mean_sq = jnp.mean(jnp.square(xg), axis=(1, 3))
    var = jnp.maximum(mean_sq - jnp.square(mean), 0.0)
    return mean, jax.lax.rsqrt(var + epsilon)


def _per_channel(v: jax.Array, channels: int) -> jax.Array:
    """[B, G] -> [B, C]: each group's value repeated over its C / G channels."""
    return jnp.repeat(v, channels // v.shape[1], axis=1)


def _broadcast(v: jax.Array, ndim: int) -> jax.Array:
    """[B, C] -> [B, 1, ..., 1, C] against an x of rank `ndim`."""
    return v.reshape(v.shape[0], *(1,) * (ndim - 2), v.shape[1])


def _affine(x, scale, bias, num_groups, epsilon):
    """(a, b) [B, C], mean, rstd [B, G] with group_norm(x) = x * a + b (float32)."""
    c = x.shape[-1]
    mean, rstd = group_stats(x, num_groups, epsilon)
    a = scale.astype(jnp.float32) * _per_channel(rstd, c)
    b = bias.astype(jnp.float32) - _per_channel(mean, c) * a
    return a, b, mean, rstd


def group_norm(x, scale, bias, num_groups: int, epsilon: float = 1e-6) -> jax.Array:
    """(x - mean) * rstd * scale + bias as one multiply-add per element, float32 [B, ..., C]."""
    a, b, _, _ = _affine(x, scale, bias, num_groups, epsilon)
    return x.astype(jnp.float32) * _broadcast(a, x.ndim) + _broadcast(b, x.ndim)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4))
def group_norm_silu(x, scale, bias, num_groups: int, epsilon: float = 1e-6) -> jax.Array:
    """silu(group_norm(x)) [B, ..., C] float32, with a closed-form backward pass.

    The backward pass keeps only x and the [B, G] / [B, C] statistics from the forward pass.
    With y = xhat * scale + bias, xhat = (x - mean) * rstd, dz = g * silu'(y) and, per example,
    S1 = sum dz, S2 = sum dz * x over the spatial axes [B, C]:
      dbias = sum_b S1, dscale = sum_b rstd (S2 - mean S1),
      dx = rstd (scale dz - m1 - xhat m2) with m1, m2 the group means of scale dz and
      scale dz xhat, i.e. dx = A dz + B x + C with A [B, C] and B, C [B, G]:
    one reduction pass over (x, g) and one elementwise pass that writes dx.
    """
    return _group_norm_silu_fwd(x, scale, bias, num_groups, epsilon)[0]


def _silu(y):
    return y * jax.nn.sigmoid(y)


def _group_norm_silu_fwd(x, scale, bias, num_groups, epsilon):
    a, b, mean, rstd = _affine(x, scale, bias, num_groups, epsilon)
    y = x.astype(jnp.float32) * _broadcast(a, x.ndim) + _broadcast(b, x.ndim)
    return _silu(y), (x, scale, bias, a, b, mean, rstd)


def _group_norm_silu_bwd(num_groups, epsilon, residuals, g):
    del epsilon  # folded into rstd
    x, scale, bias, a, b, mean, rstd = residuals
    c, ndim = x.shape[-1], x.ndim
    xf = x.astype(jnp.float32)
    y = xf * _broadcast(a, ndim) + _broadcast(b, ndim)
    sig = jax.nn.sigmoid(y)
    dz = g.astype(jnp.float32) * sig * (1.0 + y * (1.0 - sig))  # d silu / dy
    axes = tuple(range(1, ndim - 1))
    s1 = jnp.sum(dz, axis=axes)  # [B, C]
    s2 = jnp.sum(dz * xf, axis=axes)  # [B, C]
    mean_c, rstd_c = _per_channel(mean, c), _per_channel(rstd, c)
    scale32 = scale.astype(jnp.float32)
    dxhat_sum = s2 - mean_c * s1  # sum over space of dz * (x - mean), [B, C]
    dbias = jnp.sum(s1, axis=0)
    dscale = jnp.sum(dxhat_sum * rstd_c, axis=0)
    n = xf.size // (xf.shape[0] * num_groups)  # elements per group
    groups = (x.shape[0], num_groups, c // num_groups)
    m1 = jnp.sum((scale32 * s1).reshape(groups), axis=-1) / n  # group mean of scale dz, [B, G]
    m2 = jnp.sum((scale32 * dxhat_sum).reshape(groups), axis=-1) * rstd / n  # ... of scale dz xhat
    coef_x = -rstd * rstd * m2  # [B, G]
    const = rstd * (mean * rstd * m2 - m1)  # [B, G]
    dx = (
        dz * _broadcast(scale32 * rstd_c, ndim)
        + xf * _broadcast(_per_channel(coef_x, c), ndim)
        + _broadcast(_per_channel(const, c), ndim)
    )
    return dx.astype(x.dtype), dscale.astype(scale.dtype), dbias.astype(bias.dtype)


group_norm_silu.defvjp(_group_norm_silu_fwd, _group_norm_silu_bwd)


class GroupNorm(nn.Module):
    """Drop-in `flax.linen.GroupNorm` (same name and parameters), optionally fused with SiLU.

    x [B, ..., C] -> [B, ..., C] in `dtype` (default: x's dtype promoted with float32, as flax).
    `activation`: None (plain GroupNorm, autodiff backward) or "silu" (silu(GroupNorm(x)) with
    the closed-form backward of `group_norm_silu`; parameters unchanged).
    """

    num_groups: int = 32
    epsilon: float = 1e-6
    dtype: Any = None
    param_dtype: Any = jnp.float32
    activation: str | None = None

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        c = x.shape[-1]
        if c % self.num_groups:
            raise ValueError(f"{c} channels are not divisible into {self.num_groups} groups.")
        scale = self.param("scale", nn.initializers.ones, (c,), self.param_dtype)
        bias = self.param("bias", nn.initializers.zeros, (c,), self.param_dtype)
        if self.activation == "silu":
            y = group_norm_silu(x, scale, bias, self.num_groups, self.epsilon)
        elif self.activation is None:
            y = group_norm(x, scale, bias, self.num_groups, self.epsilon)
        else:
            raise ValueError(f"activation must be None or 'silu', got {self.activation!r}.")
        dtype = self.dtype or jnp.promote_types(x.dtype, self.param_dtype)
        return y.astype(dtype)


# --- convolution -----------------------------------------------------------------------------


def _nhwc_conv(x, kernel, pads, precision):
    return lax.conv_general_dilated(
        x, kernel, (1, 1), pads, dimension_numbers=_NHWC, precision=precision
    )


@functools.partial(jax.jit, static_argnums=(2, 3, 4))
def blocked_im2col_weight_grad(x, dy, kernel_shape, pads, precision=None) -> jax.Array:
    """`conv_weight_grad` as its own jitted function, so its lowering is a named private function
    (`@blocked_im2col_weight_grad`) that a test can find in, or miss from, an exported module."""
    return conv_weight_grad(x, dy, kernel_shape, pads, precision)


def xla_weight_grad(x, dy, kernel, pads, precision=None) -> jax.Array:
    """XLA's own weight gradient of the stride-1 NHWC convolution (autodiff of the forward): the
    accelerators' path, where cuDNN / the TPU compiler make it the fast one."""
    _, kernel_vjp = jax.vjp(lambda k: _nhwc_conv(x, k, pads, precision), kernel)
    return kernel_vjp(dy)[0]


def conv_weight_grad(x, dy, kernel_shape, pads, precision=None) -> jax.Array:
    """d(sum(dy * conv(x, k))) / dk [kh, kw, Cin, Cout] for a stride-1 NHWC convolution.

    x [B, H, W, Cin], dy [B, Ho, Wo, Cout], pads ((top, bottom), (left, right)). A `lax.scan`
    over blocks of R output rows (R = 4, 3, 2 or 1, the first to divide Ho): per block the
    kh * kw shifted views of the padded input, concatenated on channels, are the im2col patches
    [B * R * Wo, kh * kw * Cin]; dy_block^T @ patches is accumulated in float32 [Cout, kh kw Cin].
    """
    kh, kw, cin, cout = kernel_shape
    b, ho, wo, _ = dy.shape
    rows = next(r for r in (4, 3, 2, 1) if ho % r == 0)
    xp = jnp.pad(x, ((0, 0), *pads, (0, 0)))

    def block(acc, index):
        xb = lax.dynamic_slice_in_dim(xp, index * rows, rows + kh - 1, axis=1)
        dyb = lax.dynamic_slice_in_dim(dy, index * rows, rows, axis=1).reshape(-1, cout)
        views = [xb[:, i : i + rows, j : j + wo] for i in range(kh) for j in range(kw)]
        patches = jnp.concatenate(views, axis=-1).reshape(-1, kh * kw * cin)
        contract = (((0,), (0,)), ((), ()))
        update = lax.dot_general(
            dyb, patches, contract, precision=precision, preferred_element_type=jnp.float32
        )
        return acc + update, None

    acc = jnp.zeros((cout, kh * kw * cin), jnp.float32)
    acc, _ = lax.scan(block, acc, jnp.arange(ho // rows))
    return acc.T.reshape(kernel_shape)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def _conv(x, kernel, pads, precision):
    return _nhwc_conv(x, kernel, pads, precision)


def _conv_fwd(x, kernel, pads, precision):
    return _nhwc_conv(x, kernel, pads, precision), (x, kernel)


def _conv_bwd(pads, precision, residuals, dy):
    x, kernel = residuals
    _, input_vjp = jax.vjp(lambda x: _nhwc_conv(x, kernel, pads, precision), x)
    (dx,) = input_vjp(dy)
    dk = lax.platform_dependent(
        x,
        dy,
        cpu=lambda x, dy: blocked_im2col_weight_grad(x, dy, kernel.shape, pads, precision).astype(
            kernel.dtype
        ),
        default=lambda x, dy: xla_weight_grad(x, dy, kernel, pads, precision).astype(kernel.dtype),
    )
    return dx, dk


_conv.defvjp(_conv_fwd, _conv_bwd)


def _is_nhwc(dimension_numbers) -> bool:
    if dimension_numbers is None:
        return False
    if isinstance(dimension_numbers, lax.ConvDimensionNumbers):
        return dimension_numbers == lax.conv_dimension_numbers((1,) * 4, (1,) * 4, _NHWC)
    return tuple(dimension_numbers) == _NHWC


def _explicit_pads(padding, kernel_shape):
    """'SAME' / 'VALID' / ((lo, hi), (lo, hi)) -> explicit non-negative pairs, else None."""
    kh, kw = kernel_shape[:2]
    if isinstance(padding, str):
        if padding.upper() == "SAME":
            return ((kh - 1) // 2, kh // 2), ((kw - 1) // 2, kw // 2)
        if padding.upper() == "VALID":
            return (0, 0), (0, 0)
        return None
    pads = tuple((int(lo), int(hi)) for lo, hi in padding)
    return pads if len(pads) == 2 and min(min(p) for p in pads) >= 0 else None


def conv_general_dilated(
    lhs: jax.Array,
    rhs: jax.Array,
    window_strides: Sequence[int],
    padding,
    lhs_dilation: Sequence[int] | None = None,
    rhs_dilation: Sequence[int] | None = None,
    dimension_numbers=None,
    feature_group_count: int = 1,
    batch_group_count: int = 1,
    precision=None,
    preferred_element_type=None,
) -> jax.Array:
    """`lax.conv_general_dilated` with the blocked im2col weight gradient (module docstring).

    Used for 2-D NHWC / HWIO convolutions with stride 1, no dilation, no groups and zero padding
    ('SAME', 'VALID' or explicit pairs); anything else goes to `lax.conv_general_dilated`
    unchanged. The forward pass and the input gradient are XLA's on every platform; the weight
    gradient is the blocked one in a CPU lowering and XLA's (cuDNN's on GPU) in any other
    (`lax.platform_dependent`, so one exported program carries the right one per platform).
    """
    plain = (
        lhs.ndim == 4
        and tuple(window_strides) == (1, 1)
        and (lhs_dilation is None or tuple(lhs_dilation) == (1, 1))
        and (rhs_dilation is None or tuple(rhs_dilation) == (1, 1))
        and feature_group_count == 1
        and batch_group_count == 1
        and preferred_element_type is None
        and _is_nhwc(dimension_numbers)
    )
    pads = _explicit_pads(padding, rhs.shape) if plain else None
    if pads is None:
        return lax.conv_general_dilated(
            lhs,
            rhs,
            window_strides,
            padding,
            lhs_dilation,
            rhs_dilation,
            dimension_numbers,
            feature_group_count,
            batch_group_count,
            precision,
            preferred_element_type,
        )
    return _conv(lhs, rhs, pads, precision)
