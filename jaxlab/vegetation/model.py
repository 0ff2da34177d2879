"""ConvLSTM encoder + Fourier-harmonics decoder predicting reflectance deltas from the last BAP.

context BAP [B, 10, H, W, 4] ++ tiled land cover [B, 10, H, W, 10]
  -> 3 ConvLSTM layers (GroupNorm, 1x1-projected skip per layer), last hidden state of each
  -> features [B, H, W, sum(hidden)] (+ dense(time metadata), broadcast over space)
decoder, summed:
  Fourier:  coefficients a_k, b_k per pixel and band (x learnable `coeff_scale`), synthesised
            at the 20 target days of year: sum_k a_k cos(2 pi k doy / 365.25)
            + b_k sin(2 pi k doy / 365.25)
  DC:       a 1x1 conv offset per pixel and band, broadcast over time (the k = 0 term of the
            Fourier head; `model.fourier_dc=False` drops it, the study's ablation)
  weather:  dense on the (20, 21) weather sequence -> (20, 4), broadcast over space, scaled
            per pixel by (1 + gate), gate a zero-initialised 1x1 conv of the features (so the
            land cover sets each pixel's weather sensitivity; `model.weather_residual=False`
            drops it, and with it every use of the weather input: the study's ablation)
-> deltas [B, 20, H, W, 4]; reflectance = BAP + delta (normalised units).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from jaxlab.core import state as state_lib

DAYS_PER_YEAR = 365.25


def _zero_pointwise_conv(features: int, dtype: Any, name: str) -> nn.Conv:
    """A 1 x 1 conv with a zero kernel: a correction head that starts as "no correction"
    (the DC offset and the weather gate), so training begins from the Fourier fit alone."""
    return nn.Conv(features, (1, 1), dtype=dtype, kernel_init=nn.initializers.zeros, name=name)


def fourier_synthesis(coeffs: jax.Array, doy: jax.Array) -> jax.Array:
    """sum_k a_k cos(2 pi k doy / 365.25) + b_k sin(2 pi k doy / 365.25), k = 1..K.

    Args:
      coeffs: [B, H, W, C, 2K]; [..., :K] are the cosine a_k, [..., K:] the sine b_k.
      doy: [B, T] day of year of each target frame.
    Returns:
      [B, T, H, W, C].
    """
    num_harmonics = coeffs.shape[-1] // 2
    k = jnp.arange(1, num_harmonics + 1, dtype=jnp.float32)
    angle = 2 * jnp.pi * doy[..., None].astype(jnp.float32) * k / DAYS_PER_YEAR  # [B, T, K]
    basis = jnp.concatenate([jnp.cos(angle), jnp.sin(angle)], axis=-1)  # [B, T, 2K]
    return jnp.einsum("bhwck,btk->bthwc", coeffs.astype(jnp.float32), basis)


class ConvLSTMLayer(nn.Module):
    """One ConvLSTM over time: [B, T, H, W, C] -> hidden states [B, T, H, W, features].

    An explicit Python loop over the (10) context frames, one shared cell: on CPU the backward
    pass of `nn.scan` over a convolution runs ~50x slower than the unrolled loop (XLA's while
    loop takes a slow path for the kernel gradient), and 10 steps unroll cheaply.
    """

    features: int
    kernel_size: int
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        cell = nn.ConvLSTMCell(
            self.features, (self.kernel_size, self.kernel_size), dtype=self.dtype, name="cell"
        )
        batch, frames, height, width, _ = x.shape
        zeros = jnp.zeros((batch, height, width, self.features), self.dtype)
        carry = (zeros, zeros)  # (cell, hidden), what ConvLSTMCell.initialize_carry returns
        hidden = []
        for t in range(frames):
            carry, h = cell(carry, x[:, t])
            hidden.append(h)
        return jnp.stack(hidden, axis=1)


class Encoder(nn.Module):
    """3 ConvLSTM layers with GroupNorm and projected skips -> last hidden states, concatenated."""

    hidden: Sequence[int]
    kernel_size: int
    norm_groups: int
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        """x [B, T, H, W, C] -> [B, H, W, sum(hidden)]."""
        batch, frames, height, width, _ = x.shape
        last_states = []
        for i, features in enumerate(self.hidden):
            h = ConvLSTMLayer(features, self.kernel_size, self.dtype, name=f"convlstm_{i}")(x)
            h = h.reshape(batch * frames, height, width, features)
            h = nn.GroupNorm(self.norm_groups, dtype=self.dtype, name=f"norm_{i}")(h)
            h = h.reshape(batch, frames, height, width, features)
            skip = nn.Dense(features, dtype=self.dtype, name=f"skip_{i}")(x)
            x = h + skip
            last_states.append(x[:, -1])
        return jnp.concatenate(last_states, axis=-1)


class VegetationForecaster(nn.Module):
    hidden: Sequence[int] = (32, 48, 64)
    kernel_size: int = 3
    norm_groups: int = 8
    num_harmonics: int = 3
    coeff_scale_init: float = 0.1
    weather_hidden: int = 64
    num_bands: int = 4
    weather_residual: bool = True  # False: no weather term (the weather input is unused)
    fourier_dc: bool = True  # False: no DC offset (harmonics k >= 1 only)
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, batch: dict[str, jax.Array]) -> jax.Array:
        """Record batch (see data.py) -> predicted deltas [B, T_target, H, W, 4] float32."""
        context, landcover = batch["context"], batch["landcover"]
        b, frames, height, width, bands = context.shape
        target_frames = batch["target_doy"].shape[1]
        chex.assert_shape(landcover, (b, height, width, None))
        chex.assert_shape(batch["weather"], (b, target_frames, None))
        tiled = jnp.broadcast_to(landcover[:, None], (b, frames, *landcover.shape[1:]))
        x = jnp.concatenate([context, tiled], axis=-1).astype(self.dtype)

        features = Encoder(self.hidden, self.kernel_size, self.norm_groups, self.dtype)(x)
        meta = jnp.concatenate([batch["time_meta"], batch["target_start_doy"]], axis=-1)
        meta = nn.Dense(features.shape[-1], dtype=self.dtype, name="meta")(meta.astype(self.dtype))
        features = features + meta[:, None, None, :]
        features = nn.gelu(
            nn.Conv(self.hidden[-1], (3, 3), dtype=self.dtype, name="decoder_conv")(features)
        )

        # Fourier head: [B, H, W, 4, 2K] coefficients, scaled by a learnable scalar.
        coeffs = nn.Conv(
            self.num_bands * 2 * self.num_harmonics, (1, 1), dtype=self.dtype, name="fourier_coeffs"
        )(features)
        coeff_scale = self.param(
            "coeff_scale", nn.initializers.constant(self.coeff_scale_init), (), jnp.float32
        )
        coeffs = coeffs.reshape(b, height, width, self.num_bands, 2 * self.num_harmonics)
        fourier = fourier_synthesis(coeffs.astype(jnp.float32) * coeff_scale, batch["target_doy"])

        delta = fourier
        if self.fourier_dc:
            dc = _zero_pointwise_conv(self.num_bands, self.dtype, "dc_offset")(features)
            delta = delta + dc[:, None].astype(jnp.float32)
        if self.weather_residual:
            w = nn.gelu(
                nn.Dense(self.weather_hidden, dtype=self.dtype, name="weather_0")(
                    batch["weather"].astype(self.dtype)
                )
            )
            w = nn.Dense(
                self.num_bands,
                dtype=self.dtype,
                kernel_init=nn.initializers.zeros,
                name="weather_1",
            )(w)  # [B, T, 4]; gate [B, H, W, 4]
            gate = _zero_pointwise_conv(self.num_bands, self.dtype, "weather_gate")(features)
            weather = w[:, :, None, None, :] * (1.0 + gate[:, None])
            delta = delta + weather.astype(jnp.float32)
        chex.assert_shape(delta, (b, target_frames, height, width, bands))
        return delta


def make_model(config: ml_collections.ConfigDict) -> VegetationForecaster:
    m = config.model
    return VegetationForecaster(
        hidden=tuple(m.hidden),
        kernel_size=m.kernel_size,
        norm_groups=m.norm_groups,
        num_harmonics=m.num_harmonics,
        coeff_scale_init=m.coeff_scale_init,
        weather_hidden=m.weather_hidden,
        num_bands=len(config.data.bands),
        weather_residual=m.get("weather_residual", True),
        fourier_dc=m.get("fourier_dc", True),
        dtype=jnp.dtype(m.dtype),
    )


def dummy_batch(config: ml_collections.ConfigDict, batch_size: int = 1) -> dict[str, jax.Array]:
    """Zeros shaped like a record batch (for init and the benchmark)."""
    d = config.data
    size, nc, nt, nb = d.image_size, d.num_context, d.num_target, len(d.bands)
    nw = 3 * len(d.weather_variables)
    shapes = {
        "context": (batch_size, nc, size, size, nb),
        "landcover": (batch_size, size, size, len(d.landcover_classes)),
        "weather": (batch_size, nt, nw),
        "time_meta": (batch_size, 3),
        "target_start_doy": (batch_size, 1),
        "target_doy": (batch_size, nt),
        "target_mask": (batch_size, nt, size, size),
        "target_delta": (batch_size, nt, size, size, nb),
        "bap": (batch_size, size, size, nb),
    }
    out = {k: jnp.zeros(s, jnp.float32) for k, s in shapes.items()}
    out["index"] = jnp.zeros((batch_size,), jnp.int32)
    return out


def init_state(rng: jax.Array, *, model: VegetationForecaster, tx: Any, config) -> Any:
    params = model.init(rng, dummy_batch(config))["params"]
    return state_lib.create_train_state(params, tx)
