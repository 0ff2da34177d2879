"""Conditional noise-prediction networks (Flax Linen), channels last.

Both take (x_t [B, H, W, C] noisy target, cond [B, H, W, C] current state, t [B] diffusion step,
lead [B] hours, optionally hour [B] the initial state's hour of day UTC) and return eps
[B, H, W, C]. Conditioning is by concatenating the current state to the noisy target; the
diffusion step, the lead time and the hour of day enter through a sinusoidal embedding added
inside every block. The hour of day (`model.use_hour`) tells the network where it is in the
diurnal cycle, which the state alone does not: the same 2 m temperature and CIN occur in the
morning (warming, CIN weakening) and the evening (cooling, CIN strengthening).

`model.remat` recomputes each block's activations in the backward pass (`nn.remat`, i.e.
`jax.checkpoint` per block): the seed's network at the full grid keeps one block's activations
instead of all twelve convolutions' (README, "Memory at the full grid").

- `SeedMinimalUNet`: the seed's ultra-minimal network layer for layer (six conv blocks d, 2d, 2d,
  2d, d, d with GroupNorm and a time-embedding MLP; no down/upsampling, skips, residuals or
  attention), so it runs at the full 1059 x 1799 HRRR grid; base_dim 16: 82,119 params (the
  seed's 81,111 + 1,008 first-conv weights for the 7 condition channels). Config variant `paper`.
- `MinimalUNet`: the same no-downsampling idea with residual blocks and encoder-decoder skips
  (84,839 params at base_dim 16), used by the demo: on the demo data it learns several times
  faster than the seed's plain stack (demo eval noise-MSE 0.14 vs 0.63 after 500 steps, 0.078
  vs 0.47 after 1000; same data, optimizer and seed).
- `UNet`: a standard U-Net (Ho et al. 2020 style) with strided-conv downsampling, nearest
  upsampling, and self-attention at the coarsest level, for cropped training at higher quality.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from jaxlab.core import layers
from jaxlab.weather import data


def sinusoidal_embedding(x: jax.Array, dim: int, max_period: float = 10000.0) -> jax.Array:
    """x [B] float -> [B, dim] (Vaswani et al. 2017)."""
    half = dim // 2
    freqs = jnp.exp(-math.log(max_period) * jnp.arange(half, dtype=jnp.float32) / half)
    args = x.astype(jnp.float32)[:, None] * freqs[None]
    return jnp.concatenate([jnp.sin(args), jnp.cos(args)], axis=-1)


def hour_embedding(hour: jax.Array, dim: int) -> jax.Array:
    """hour [B] (UTC, any real) -> [B, dim]: harmonics k = 1 .. dim / 2 of the daily cycle."""
    k = jnp.arange(1, dim // 2 + 1, dtype=jnp.float32)
    args = 2 * math.pi * hour.astype(jnp.float32)[:, None] * k[None] / 24.0
    return jnp.concatenate([jnp.sin(args), jnp.cos(args)], axis=-1)


def _block(cls, remat: bool):
    """`cls`, or `cls` rematerialised: its activations are recomputed for the gradient."""
    return nn.remat(cls) if remat else cls


def conv(*args, **kwargs) -> nn.Conv:
    """`nn.Conv` with jaxlab's CPU weight gradient (`layers.conv_general_dilated`): the same
    parameters and the same forward / input gradient as XLA's; on CPU the weight gradient is a
    blocked im2col product, 1.45x faster for the seed network's full step (docs/performance.md).
    """
    return nn.Conv(*args, conv_general_dilated=layers.conv_general_dilated, **kwargs)


def _groups(channels: int) -> int:
    return math.gcd(channels, 8)


class ResBlock(nn.Module):
    channels: int
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, emb: jax.Array) -> jax.Array:
        h = nn.silu(nn.GroupNorm(_groups(x.shape[-1]), dtype=self.dtype)(x))
        h = nn.Conv(self.channels, (3, 3), dtype=self.dtype)(h)
        h = h + nn.Dense(self.channels, dtype=self.dtype)(nn.silu(emb))[:, None, None, :]
        h = nn.silu(nn.GroupNorm(_groups(self.channels), dtype=self.dtype)(h))
        h = nn.Conv(self.channels, (3, 3), dtype=self.dtype)(h)
        if x.shape[-1] != self.channels:
            x = nn.Conv(self.channels, (1, 1), dtype=self.dtype)(x)
        return x + h


class Embedding(nn.Module):
    """Diffusion step (and lead time) -> sinusoid [B, sin_dim] -> MLP -> [B, dim].

    The lead time (hours, x 10 so hours differ in phase) adds its own sinusoid, and the hour of
    day (when given) its harmonics sin / cos(2 pi k h / 24), k = 1 .. sin_dim / 2: no parameters.
    """

    sin_dim: int
    dim: int
    use_lead: bool = True
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, t: jax.Array, lead: jax.Array, hour=None) -> jax.Array:
        emb = sinusoidal_embedding(t.astype(jnp.float32), self.sin_dim)
        if self.use_lead:
            emb = emb + sinusoidal_embedding(lead.astype(jnp.float32) * 10.0, self.sin_dim)
        if hour is not None:
            emb = emb + hour_embedding(hour, self.sin_dim)
        emb = nn.silu(nn.Dense(self.dim, dtype=self.dtype)(emb))
        return nn.Dense(self.dim, dtype=self.dtype)(emb)


class ConvBlock(nn.Module):
    """The seed's block: conv3x3 -> GroupNorm(8) -> SiLU -> + Dense(emb) -> conv3x3 -> GN -> SiLU.

    No residual connection (as in the seed). x [B, H, W, Cin], emb [B, E] -> [B, H, W, channels].
    """

    channels: int
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, emb: jax.Array) -> jax.Array:
        groups = _groups(self.channels)
        h = conv(self.channels, (3, 3), dtype=self.dtype)(x)
        h = layers.GroupNorm(groups, dtype=self.dtype, activation="silu")(h)
        h = h + nn.Dense(self.channels, dtype=self.dtype)(emb)[:, None, None, :]
        h = conv(self.channels, (3, 3), dtype=self.dtype)(h)
        return layers.GroupNorm(groups, dtype=self.dtype, activation="silu")(h)


class SeedMinimalUNet(nn.Module):
    """The seed's `UltraMinimalDDPM` layer for layer, plus the concatenated condition.

    No down/upsampling, no skips, no attention, so every block sees the full 1059 x 1799 grid
    (receptive field 25 x 25 points: 12 convs of 3 x 3). Layers (d = base_dim, E = emb_mult * d):
    embedding sinusoid(d) -> Dense(E) -> SiLU -> Dense(E); ConvBlocks 2C -> d -> 2d -> 2d
    (encoder) -> 2d -> d -> d (decoder); a 1 x 1 conv to C. With C = 7 variables, d = 16 and
    E = 64 that is 82,119 parameters: the seed's 81,111 ("about 81K", C input channels) plus
    1,008 = 7 x 16 x 9 for the 7 condition channels of the first conv.
    """

    out_channels: int
    base_dim: int = 16
    channel_mults: Sequence[int] = (1, 2)
    use_lead: bool = True
    dtype: jnp.dtype = jnp.float32
    emb_mult: int = 4
    remat: bool = False

    @nn.compact
    def __call__(self, xt, cond, t, lead, hour=None):
        chex.assert_equal_shape([xt, cond])
        chex.assert_rank(xt, 4)
        d = self.base_dim
        emb = Embedding(d, d * self.emb_mult, self.use_lead, self.dtype)(t, lead, hour)
        h = jnp.concatenate([xt, cond], axis=-1).astype(self.dtype)
        widths = [d * m for m in self.channel_mults]  # encoder d, 2d; then 2d; mirrored
        block = _block(ConvBlock, self.remat)
        for width in [*widths, widths[-1], *reversed(widths), widths[0]]:
            h = block(width, self.dtype)(h, emb)
        out = conv(self.out_channels, (1, 1), dtype=self.dtype)(h)
        return out.astype(jnp.float32)


class MinimalUNet(nn.Module):
    """Residual variant of the seed's network, used by the demo (see the module docstring).

    No downsampling: conv-in; residual blocks d, 2d (encoder), 2d (middle), 2d, d (decoder, each
    fed the concatenated encoder skip); GroupNorm + SiLU + 3x3 conv-out. base_dim 16 with
    emb_mult 1: 84,839 parameters.
    """

    out_channels: int
    base_dim: int = 16
    channel_mults: Sequence[int] = (1, 2)
    use_lead: bool = True
    dtype: jnp.dtype = jnp.float32
    emb_mult: int = 1
    remat: bool = False

    @nn.compact
    def __call__(self, xt, cond, t, lead, hour=None):
        chex.assert_equal_shape([xt, cond])
        chex.assert_rank(xt, 4)
        dim = self.base_dim * self.emb_mult
        emb = Embedding(dim, dim, self.use_lead, self.dtype)(t, lead, hour)
        h = jnp.concatenate([xt, cond], axis=-1).astype(self.dtype)
        h = nn.Conv(self.base_dim, (3, 3), dtype=self.dtype)(h)
        skips = [h]
        block = _block(ResBlock, self.remat)
        for mult in self.channel_mults:
            h = block(self.base_dim * mult, self.dtype)(h, emb)
            skips.append(h)
        h = block(self.base_dim * self.channel_mults[-1], self.dtype)(h, emb)
        for mult in reversed(self.channel_mults):
            h = block(self.base_dim * mult, self.dtype)(jnp.concatenate([h, skips.pop()], -1), emb)
        h = jnp.concatenate([h, skips.pop()], -1)
        h = nn.silu(nn.GroupNorm(_groups(h.shape[-1]), dtype=self.dtype)(h))
        out = nn.Conv(self.out_channels, (3, 3), dtype=self.dtype)(h)
        return out.astype(jnp.float32)


class Attention(nn.Module):
    heads: int = 4
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        b, h, w, c = x.shape
        y = nn.GroupNorm(_groups(c), dtype=self.dtype)(x).reshape(b, h * w, c)
        y = nn.MultiHeadDotProductAttention(self.heads, dtype=self.dtype)(y, y)
        return x + y.reshape(b, h, w, c)


class UNet(nn.Module):
    """Down/up-sampling U-Net; attention at the coarsest level. Pads H, W to a multiple of
    2^(levels - 1) and crops back, so any grid works."""

    out_channels: int
    base_dim: int = 32
    channel_mults: Sequence[int] = (1, 2, 2)
    num_res_blocks: int = 1
    attention_heads: int = 4
    use_lead: bool = True
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, xt, cond, t, lead, hour=None):
        chex.assert_equal_shape([xt, cond])
        b, height, width, _ = xt.shape
        factor = 2 ** (len(self.channel_mults) - 1)
        pad_h, pad_w = (-height) % factor, (-width) % factor
        emb = Embedding(self.base_dim * 4, self.base_dim * 4, self.use_lead, self.dtype)(
            t, lead, hour
        )
        h = jnp.concatenate([xt, cond], axis=-1).astype(self.dtype)
        h = jnp.pad(h, ((0, 0), (0, pad_h), (0, pad_w), (0, 0)))
        h = nn.Conv(self.base_dim, (3, 3), dtype=self.dtype)(h)
        skips = [h]
        for level, mult in enumerate(self.channel_mults):
            for _ in range(self.num_res_blocks):
                h = ResBlock(self.base_dim * mult, self.dtype)(h, emb)
                if level == len(self.channel_mults) - 1:
                    h = Attention(self.attention_heads, self.dtype)(h)
                skips.append(h)
            if level < len(self.channel_mults) - 1:
                h = nn.Conv(h.shape[-1], (3, 3), strides=(2, 2), dtype=self.dtype)(h)
                skips.append(h)
        h = ResBlock(h.shape[-1], self.dtype)(h, emb)
        h = Attention(self.attention_heads, self.dtype)(h)
        h = ResBlock(h.shape[-1], self.dtype)(h, emb)
        for level, mult in reversed(list(enumerate(self.channel_mults))):
            for _ in range(self.num_res_blocks + 1):
                h = ResBlock(self.base_dim * mult, self.dtype)(
                    jnp.concatenate([h, skips.pop()], -1), emb
                )
                if level == len(self.channel_mults) - 1:
                    h = Attention(self.attention_heads, self.dtype)(h)
            if level > 0:
                bh, hh, ww, cc = h.shape
                h = jax.image.resize(h, (bh, hh * 2, ww * 2, cc), "nearest")
                h = nn.Conv(cc, (3, 3), dtype=self.dtype)(h)
        h = nn.silu(nn.GroupNorm(_groups(h.shape[-1]), dtype=self.dtype)(h))
        out = nn.Conv(self.out_channels, (3, 3), dtype=self.dtype)(h)
        return out[:, :height, :width].astype(jnp.float32)


def make_model(config: ml_collections.ConfigDict) -> nn.Module:
    m = config.model
    dtype = jnp.dtype(m.dtype)
    channels = len(data.VARIABLES)
    if m.name == "seed_minimal_unet":
        return SeedMinimalUNet(
            channels, m.base_dim, tuple(m.channel_mults), m.use_lead, dtype, m.emb_mult, m.remat
        )
    if m.name == "minimal_unet":
        return MinimalUNet(
            channels, m.base_dim, tuple(m.channel_mults), m.use_lead, dtype, m.emb_mult, m.remat
        )
    if m.name == "unet":
        return UNet(
            channels,
            m.base_dim,
            tuple(m.channel_mults),
            m.num_res_blocks,
            m.attention_heads,
            m.use_lead,
            dtype,
        )
    raise ValueError(
        f"model.name must be 'seed_minimal_unet', 'minimal_unet' or 'unet', got {m.name!r}."
    )


def init_params(model: nn.Module, rng: jax.Array, shape: tuple[int, int, int]):
    """Parameters for inputs of [1, H, W, C] (the hour of day adds no parameters)."""
    x = jnp.zeros((1, *shape), jnp.float32)
    return model.init(rng, x, x, jnp.zeros((1,), jnp.int32), jnp.ones((1,), jnp.float32))["params"]


def apply(model: nn.Module, params, xt, cond, t, lead, hour, use_hour: bool) -> jax.Array:
    """The network's output [B, H, W, C]; `hour` [B] enters only when `use_hour`."""
    return model.apply({"params": params}, xt, cond, t, lead, hour if use_hour else None)
