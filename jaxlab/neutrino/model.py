"""Hierarchical transformer: pulses -> DOM embeddings -> event direction (iceaggr).

Shapes, for a batch of G packs (see `data_packing.py`): pulse tokens [G, R, L], DOM tokens
[G, R2, L2], event slots [G, E], d = d_model.

  T1 (DOM level): each pulse row [L] is a packed sequence of several DOMs' pulses; segment-id
      attention (`core.attention`) keeps every DOM's pulses to themselves. Pulse outputs are
      mean-pooled per DOM (a segment sum over the pack's R2 * L2 DOM slots) -> [G, R2, L2, d].
  T2 (event level): DOM embedding + embedded geometry (x, y, z, sensor_id); each DOM row is a
      packed sequence of several events' DOMs, padding and other events masked out; mean-pooled
      per event -> [G, E, d] -> MLP head -> [G, E, 3].

The 3-vector is the direction for the angular loss (normalised there) and mu * kappa for the
von Mises-Fisher loss (kappa = its norm). There are no positional encodings: pulses of a DOM and
DOMs of an event are sets, ordered by their time and geometry features.

`FlatTransformer` (`model.kind = "flat"`, the study's comparison arm) reads the same packs but
drops the hierarchy: every pulse token carries its DOM's geometry (x, y, z, sensor_id) next to its
own features, and one encoder attends over all pulses of an event at once (the whole pack's
R * L pulse tokens are one row, segment id = event), then mean-pools per event -> the same head.
The tokens are exactly the hierarchical model's (the same truncation and packs), so the two arms
differ only in how attention is structured; its cost per pack grows with (R * L)^2 instead of
R * L^2 + R2 * L2^2. With `max_tokens` = K > 0 (`model.flat_max_tokens`, the study's cost-matched
arm) it attends over at most K pulses per event, chosen by `first_clean_pulses`: at most K^2
query-key pairs per event, against the hierarchical model's D * P^2 + D^2 for D DOMs of P pulses.
"""

from __future__ import annotations

from typing import Any

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from jaxlab.core import attention
from jaxlab.core import state as state_lib
from jaxlab.neutrino import data_packing


class TransformerBlock(nn.Module):
    """Pre-LayerNorm block: x + MHA(LN(x)); x + MLP(LN(x)), masked by packed segment ids."""

    num_heads: int
    mlp_dim: int
    dropout_rate: float
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, segment_ids: jax.Array, *, deterministic: bool) -> jax.Array:
        """x [B, T, d], segment_ids [B, T] int (0 = padding) -> [B, T, d]."""
        h = nn.LayerNorm(dtype=self.dtype)(x)
        h = attention.MultiHeadAttention(
            num_heads=self.num_heads, dropout_rate=self.dropout_rate, dtype=self.dtype
        )(h, segment_ids=segment_ids, deterministic=deterministic)
        x = x + nn.Dropout(self.dropout_rate)(h, deterministic=deterministic)
        h = nn.LayerNorm(dtype=self.dtype)(x)
        h = nn.Dense(self.mlp_dim, dtype=self.dtype)(h)
        h = nn.gelu(h)
        h = nn.Dense(x.shape[-1], dtype=self.dtype)(h)
        return x + nn.Dropout(self.dropout_rate)(h, deterministic=deterministic)


class Encoder(nn.Module):
    """Input projection + `num_layers` blocks + final LayerNorm over packed rows."""

    d_model: int
    num_layers: int
    num_heads: int
    mlp_dim: int
    dropout_rate: float
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, segment_ids: jax.Array, *, deterministic: bool) -> jax.Array:
        """x [B, T, F], segment_ids [B, T] -> [B, T, d_model]; padding tokens are zeroed."""
        h = nn.Dense(self.d_model, dtype=self.dtype)(x)
        h = nn.gelu(nn.Dense(self.d_model, dtype=self.dtype)(h))
        for _ in range(self.num_layers):
            h = TransformerBlock(self.num_heads, self.mlp_dim, self.dropout_rate, self.dtype)(
                h, segment_ids, deterministic=deterministic
            )
        h = nn.LayerNorm(dtype=self.dtype)(h)
        return jnp.where(segment_ids[..., None] > 0, h, 0)


def segment_mean(values: jax.Array, segment: jax.Array, num_segments: int) -> jax.Array:
    """Mean of `values` [G, N, d] per segment [G, N] in [0, num_segments] -> [G, num_segments, d].

    Index `num_segments` is the dump slot of padding tokens and is dropped; empty segments are 0.
    """

    def one(v, s):
        total = jax.ops.segment_sum(v, s, num_segments=num_segments + 1)
        count = jax.ops.segment_sum(jnp.ones(s.shape, v.dtype), s, num_segments=num_segments + 1)
        return (total / jnp.maximum(count, 1)[:, None])[:num_segments]

    return jax.vmap(one)(values, segment)


class HierarchicalTransformer(nn.Module):
    d_model: int
    dom_layers: int
    event_layers: int
    num_heads: int
    mlp_dim: int
    dropout_rate: float
    dtype: Any = jnp.float32

    def setup(self):
        def encoder(layers):
            return Encoder(
                self.d_model, layers, self.num_heads, self.mlp_dim, self.dropout_rate, self.dtype
            )

        self.dom_encoder = encoder(self.dom_layers)
        self.event_encoder = encoder(self.event_layers)
        self.geometry = nn.Dense(self.d_model, dtype=self.dtype)
        self.head_hidden = nn.Dense(self.d_model, dtype=self.dtype)
        self.head_out = nn.Dense(3, dtype=self.dtype)

    def dom_embeddings(self, batch: dict[str, jax.Array], *, deterministic: bool) -> jax.Array:
        """T1: pulse rows -> one embedding per DOM slot [G, R2, L2, d] (0 for empty slots)."""
        g, r, length, _ = batch["pulse_features"].shape
        _, r2, l2, _ = batch["dom_features"].shape
        chex.assert_shape([batch["pulse_segment"], batch["pulse_dom"]], (g, r, length))
        tokens = self.dom_encoder(
            batch["pulse_features"].reshape(g * r, length, data_packing.PULSE_FEATURES),
            batch["pulse_segment"].reshape(g * r, length),
            deterministic=deterministic,
        )  # [G * R, L, d]
        pooled = segment_mean(
            tokens.reshape(g, r * length, self.d_model),
            batch["pulse_dom"].reshape(g, r * length),
            r2 * l2,
        )  # [G, R2 * L2, d]
        return pooled.reshape(g, r2, l2, self.d_model)

    def __call__(self, batch: dict[str, jax.Array], *, deterministic: bool = True) -> jax.Array:
        """Packed batch (data_packing.MODEL_KEYS) -> [G, E, 3] float32 (unnormalised direction)."""
        g, _, _, _ = batch["pulse_features"].shape
        _, r2, l2, _ = batch["dom_features"].shape
        num_events = batch["direction"].shape[1]
        chex.assert_shape([batch["dom_segment"], batch["dom_event"]], (g, r2, l2))

        doms = self.dom_embeddings(batch, deterministic=deterministic)
        tokens = self.event_encoder(
            (doms + self.geometry(batch["dom_features"])).reshape(g * r2, l2, self.d_model),
            batch["dom_segment"].reshape(g * r2, l2),
            deterministic=deterministic,
        )  # [G * R2, L2, d]
        events = segment_mean(
            tokens.reshape(g, r2 * l2, self.d_model),
            batch["dom_event"].reshape(g, r2 * l2),
            num_events,
        )  # [G, E, d]
        out = self.head_out(nn.gelu(self.head_hidden(events))).astype(jnp.float32)
        chex.assert_shape(out, (g, num_events, 3))
        return out


class FlatTransformer(nn.Module):
    """One encoder over all pulses of an event (no DOM level); the hierarchy's ablation.

    A token's input is embedded as the hierarchical model embeds it, minus the hierarchy: the
    pulse features through the same two-layer projection and a LayerNorm (as the DOM encoder's
    output is normalised before geometry is added), plus the embedded geometry of its DOM. The
    LayerNorm matters: pulse times differ by ~1e-2 in normalised units within an event, and
    concatenated with the O(1) geometry they would start out drowned.
    """

    d_model: int
    num_layers: int
    num_heads: int
    mlp_dim: int
    dropout_rate: float
    dtype: Any = jnp.float32
    max_tokens: int = 0  # > 0: each event keeps its `first_clean_pulses` (the cost-matched arm)

    @nn.compact
    def __call__(self, batch: dict[str, jax.Array], *, deterministic: bool = True) -> jax.Array:
        """Packed batch (data_packing.MODEL_KEYS) -> [G, E, 3] float32 (unnormalised direction)."""
        tokens, event = flat_tokens(batch)  # [G, N = R * L, 7], [G, N]
        g = tokens.shape[0]
        num_events = batch["direction"].shape[1]
        rows = g  # every pack is one attention row of N tokens (segment id = event) ...
        if self.max_tokens > 0:  # ... or each event is its own row of its first K pulses
            tokens, event = first_clean_pulses(tokens, event, num_events, self.max_tokens)
            rows = g * num_events
        segment = jnp.where(event < num_events, event + 1, 0)  # 0 = padding
        pulses = tokens[..., : data_packing.PULSE_FEATURES]
        geometry = tokens[..., data_packing.PULSE_FEATURES :]
        h = nn.Dense(self.d_model, dtype=self.dtype)(pulses)
        h = nn.gelu(nn.Dense(self.d_model, dtype=self.dtype)(h))
        h = nn.LayerNorm(dtype=self.dtype)(h) + nn.Dense(self.d_model, dtype=self.dtype)(geometry)
        h, segment = h.reshape(rows, -1, self.d_model), segment.reshape(rows, -1)
        for _ in range(self.num_layers):
            h = TransformerBlock(self.num_heads, self.mlp_dim, self.dropout_rate, self.dtype)(
                h, segment, deterministic=deterministic
            )
        h = nn.LayerNorm(dtype=self.dtype)(h).reshape(g, -1, self.d_model)  # [G, T, d]
        events = segment_mean(h, event, num_events)  # [G, E, d]; padding goes to the dump slot
        hidden = nn.gelu(nn.Dense(self.d_model, dtype=self.dtype)(events))
        out = nn.Dense(3, dtype=self.dtype)(hidden).astype(jnp.float32)
        chex.assert_shape(out, (tokens.shape[0], num_events, 3))
        return out


def flat_tokens(batch: dict[str, jax.Array]) -> tuple[jax.Array, jax.Array]:
    """Each pulse token with its DOM's features, and its event slot, from a pack's arrays.

    Returns tokens [G, R * L, 3 + 4] (pulse features, then x, y, z, sensor_id of its DOM; 0 for
    padding) and event [G, R * L] int32 in [0, E] (E = padding, `segment_mean`'s dump slot).
    """
    g, r, length, _ = batch["pulse_features"].shape
    _, r2, l2, _ = batch["dom_features"].shape
    num_events = batch["direction"].shape[1]
    dom = batch["pulse_dom"].reshape(g, r * length)  # in [0, R2 * L2]; R2 * L2 = padding
    # One dump row appended at index R2 * L2, so padding pulses gather zeros / event E.
    dom_features = jnp.pad(batch["dom_features"].reshape(g, r2 * l2, -1), ((0, 0), (0, 1), (0, 0)))
    dom_event = jnp.pad(
        batch["dom_event"].reshape(g, r2 * l2), ((0, 0), (0, 1)), constant_values=num_events
    )
    geometry = jnp.take_along_axis(dom_features, dom[..., None], axis=1)  # [G, R * L, 4]
    event = jnp.take_along_axis(dom_event, dom, axis=1)  # [G, R * L]
    event = jnp.where(batch["pulse_segment"].reshape(g, r * length) > 0, event, num_events)
    pulses = batch["pulse_features"].reshape(g, r * length, -1)
    return jnp.concatenate([pulses, geometry.astype(pulses.dtype)], axis=-1), event


def first_clean_pulses(
    tokens: jax.Array, event: jax.Array, num_events: int, max_tokens: int
) -> tuple[jax.Array, jax.Array]:
    """Each event's at most K = `max_tokens` pulse tokens, gathered into a row of its own.

    A flat transformer with a fixed token budget needs a rule for long events; this is the one
    Kaggle-style flat models use: non-auxiliary pulses first (auxiliary ones are mostly noise or
    late, scattered light), and among them the earliest in time (the least scattered light, which
    carries the direction); ties by token position. Attention then runs over [E, K] rows: E K^2
    query-key pairs per pack, not N^2.

    tokens [G, N, 7] (`flat_tokens`), event [G, N] in [0, E] (E = padding) -> tokens [G, E * K, 7]
    (event e's kept pulses in slots e K .. e K + K - 1, in rank order, zeros after them) and
    event [G, E * K] (e for a kept pulse, E for an empty slot).
    """
    g, n, _ = tokens.shape
    k = max_tokens
    # Rank of each token inside its event by (auxiliary, time, position): a pairwise count, N^2
    # comparisons per pack, one pass (no features, no heads), cheap next to attention over N.
    aux, time = tokens[..., 2] > 0.5, tokens[..., 0]
    position = jnp.arange(n)
    same = event[:, :, None] == event[:, None, :]  # [G, N (token), N (other)]
    before = (aux[:, None, :] < aux[:, :, None]) | (
        (aux[:, None, :] == aux[:, :, None])
        & (
            (time[:, None, :] < time[:, :, None])
            | ((time[:, None, :] == time[:, :, None]) & (position[None, :] < position[:, None]))
        )
    )
    rank = jnp.sum(same & before, axis=-1)  # [G, N]
    keep = (rank < k) & (event < num_events)
    slot = jnp.where(keep, event * k + rank, num_events * k)  # dropped -> dump slot E * K
    source = jnp.full((g, num_events * k + 1), n, jnp.int32)  # n = the appended zero token
    source = source.at[jnp.arange(g)[:, None], slot].set(position[None, :].astype(jnp.int32))
    source = source[:, : num_events * k]
    padded = jnp.pad(tokens, ((0, 0), (0, 1), (0, 0)))
    kept = jnp.take_along_axis(padded, source[..., None], axis=1)  # [G, E * K, 7]
    slot_event = jnp.repeat(jnp.arange(num_events, dtype=event.dtype), k)[None]
    return kept, jnp.where(source < n, slot_event, num_events)


MODEL_KINDS = ("hierarchical", "flat")


def make_model(config: ml_collections.ConfigDict) -> nn.Module:
    """`model.kind`: "hierarchical" (default, the seed's model) or "flat" (`FlatTransformer` with
    `model.flat_layers` blocks, `model.flat_mlp_dim` wide; 0 = dom + event layers, mlp_dim; at
    most `model.flat_max_tokens` pulses per event, 0 = all)."""
    m = config.model
    kind = m.get("kind", "hierarchical")
    if kind == "flat":
        return FlatTransformer(
            d_model=m.d_model,
            num_layers=m.get("flat_layers", 0) or m.dom_layers + m.event_layers,
            num_heads=m.num_heads,
            mlp_dim=m.get("flat_mlp_dim", 0) or m.mlp_dim,
            dropout_rate=m.dropout,
            dtype=jnp.dtype(m.dtype),
            max_tokens=m.get("flat_max_tokens", 0),
        )
    if kind != "hierarchical":
        raise ValueError(f"config.model.kind: {kind!r} is not one of {MODEL_KINDS}.")
    return HierarchicalTransformer(
        d_model=m.d_model,
        dom_layers=m.dom_layers,
        event_layers=m.event_layers,
        num_heads=m.num_heads,
        mlp_dim=m.mlp_dim,
        dropout_rate=m.dropout,
        dtype=jnp.dtype(m.dtype),
    )


def dummy_batch(spec: data_packing.PackSpec, packs: int = 1) -> dict[str, jax.Array]:
    """Zeros of a batch's shapes (for init)."""
    pack = data_packing.empty_pack(spec)
    return {k: jnp.broadcast_to(pack[k], (packs, *pack[k].shape)) for k in data_packing.MODEL_KEYS}


def init_state(
    rng: jax.Array, *, model: nn.Module, tx: Any, spec: data_packing.PackSpec
) -> state_lib.TrainState:
    params = model.init(rng, dummy_batch(spec))["params"]
    return state_lib.create_train_state(params, tx)


def num_params(model: nn.Module, spec: data_packing.PackSpec) -> int:
    """Number of parameters of `model` for packs of `spec` (shapes only, nothing computed)."""
    shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), dummy_batch(spec))["params"])
    return int(sum(x.size for x in jax.tree.leaves(shapes)))
