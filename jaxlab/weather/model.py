"""Conditional noise-prediction networks (Flax Linen), channels last.

Both take (x_t [B, H, W, C] noisy target, cond [B, H, W, C] current state, t [B] diffusion step,
lead [B] hours) and return eps [B, H, W, C]. Conditioning is by concatenating the current state
to the noisy target; the diffusion step and the lead time enter through a sinusoidal embedding
added inside every residual block.

- `MinimalUNet`: the seed's network, no down/upsampling and no attention, so it runs at the full
  1059 x 1799 HRRR grid: conv-in, an encoder of residual blocks widening to 2 x base_dim, a middle
  block, a decoder with skip connections, GroupNorm + SiLU + conv-out (base_dim 16: ~81K params).
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


def sinusoidal_embedding(x: jax.Array, dim: int, max_period: float = 10000.0) -> jax.Array:
    """x [B] float -> [B, dim] (Vaswani et al. 2017)."""
    half = dim // 2
    freqs = jnp.exp(-math.log(max_period) * jnp.arange(half, dtype=jnp.float32) / half)
    args = x.astype(jnp.float32)[:, None] * freqs[None]
    return jnp.concatenate([jnp.sin(args), jnp.cos(args)], axis=-1)


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
    """Diffusion step (and lead time) -> [B, dim] embedding."""

    dim: int
    use_lead: bool = True
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, t: jax.Array, lead: jax.Array) -> jax.Array:
        emb = sinusoidal_embedding(t.astype(jnp.float32), self.dim)
        if self.use_lead:
            emb = emb + sinusoidal_embedding(lead.astype(jnp.float32) * 10.0, self.dim)
        emb = nn.silu(nn.Dense(self.dim, dtype=self.dtype)(emb))
        return nn.Dense(self.dim, dtype=self.dtype)(emb)


class MinimalUNet(nn.Module):
    """No downsampling: every block sees the full grid (receptive field 2 x 3x3 per block)."""

    out_channels: int
    base_dim: int = 16
    channel_mults: Sequence[int] = (1, 2)
    use_lead: bool = True
    dtype: jnp.dtype = jnp.float32
    emb_mult: int = 1

    @nn.compact
    def __call__(self, xt, cond, t, lead):
        chex.assert_equal_shape([xt, cond])
        chex.assert_rank(xt, 4)
        emb = Embedding(self.base_dim * self.emb_mult, self.use_lead, self.dtype)(t, lead)
        h = jnp.concatenate([xt, cond], axis=-1).astype(self.dtype)
        h = nn.Conv(self.base_dim, (3, 3), dtype=self.dtype)(h)
        skips = [h]
        for mult in self.channel_mults:
            h = ResBlock(self.base_dim * mult, self.dtype)(h, emb)
            skips.append(h)
        h = ResBlock(self.base_dim * self.channel_mults[-1], self.dtype)(h, emb)
        for mult in reversed(self.channel_mults):
            h = ResBlock(self.base_dim * mult, self.dtype)(
                jnp.concatenate([h, skips.pop()], -1), emb
            )
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
    def __call__(self, xt, cond, t, lead):
        chex.assert_equal_shape([xt, cond])
        b, height, width, _ = xt.shape
        factor = 2 ** (len(self.channel_mults) - 1)
        pad_h, pad_w = (-height) % factor, (-width) % factor
        emb = Embedding(self.base_dim * 4, self.use_lead, self.dtype)(t, lead)
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
    channels = len(config.data.variables)
    if m.name == "minimal_unet":
        return MinimalUNet(
            channels, m.base_dim, tuple(m.channel_mults), m.use_lead, dtype, m.emb_mult
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
    raise ValueError(f"model.name must be 'minimal_unet' or 'unet', got {m.name!r}.")


def init_params(model: nn.Module, rng: jax.Array, shape: tuple[int, int, int]):
    """Parameters for inputs of [1, H, W, C]."""
    x = jnp.zeros((1, *shape), jnp.float32)
    return model.init(rng, x, x, jnp.zeros((1,), jnp.int32), jnp.ones((1,), jnp.float32))["params"]
