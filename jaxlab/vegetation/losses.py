"""Training loss on reflectance deltas: masked log-cosh + edge penalty, under-prediction weighted.

loss = regression_weight * regression + edge_weight * edge
regression = sum_{clear} w * logcosh(pred - true) / (count_clear * bands),
             w = underprediction_weight where |pred| < |true|, else 1
edge       = mean over horizontally / vertically adjacent clear pixel pairs of
             (d pred - d true)^2, d the finite difference along that axis
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections


def logcosh(x: jax.Array) -> jax.Array:
    """log(cosh(x)), overflow-safe: |x| + log1p(exp(-2|x|)) - log 2."""
    a = jnp.abs(x)
    return a + jnp.log1p(jnp.exp(-2.0 * a)) - jnp.log(2.0)


def masked_regression(pred, true, mask, underprediction_weight: float) -> jax.Array:
    """Weighted log-cosh over clear pixels. pred, true [B, T, H, W, C]; mask [B, T, H, W]."""
    weight = jnp.where(jnp.abs(pred) < jnp.abs(true), underprediction_weight, 1.0)
    m = mask[..., None]
    total = jnp.sum(m * weight * logcosh(pred - true))
    return total / jnp.maximum(jnp.sum(m) * pred.shape[-1], 1.0)


def edge_penalty(pred, true, mask) -> jax.Array:
    """Mean squared difference of spatial gradients over pairs of adjacent clear pixels."""
    total, count = 0.0, 0.0
    for axis in (2, 3):  # H, W of [B, T, H, W, C]
        n = pred.shape[axis]
        lo, hi = (slice(None),) * axis + (slice(0, n - 1),), (slice(None),) * axis + (slice(1, n),)
        pair = (mask[lo] * mask[hi])[..., None]
        diff = (pred[hi] - pred[lo]) - (true[hi] - true[lo])
        total += jnp.sum(pair * jnp.square(diff))
        count += jnp.sum(pair) * pred.shape[-1]
    return total / jnp.maximum(count, 1.0)


def loss_fn(pred, batch, config: ml_collections.ConfigDict) -> tuple[jax.Array, dict]:
    """(total loss, parts). pred [B, T, H, W, C] deltas; batch holds target_delta / target_mask."""
    c = config.loss
    true, mask = batch["target_delta"], batch["target_mask"]
    regression = masked_regression(pred, true, mask, c.underprediction_weight)
    edge = edge_penalty(pred, true, mask)
    total = c.regression_weight * regression + c.edge_weight * edge
    return total, {"regression": regression, "edge": edge}
