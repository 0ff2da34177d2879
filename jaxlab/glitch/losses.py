"""Classification losses: label-smoothed cross-entropy and focal loss, optional class weights.

All take logits [B, C] float32 and integer labels [B] and return per-example losses [B];
`weighted_mean` reduces them as PyTorch's `CrossEntropyLoss(weight=w)` does:
sum_i w[y_i] l_i / sum_i w[y_i] (over valid examples).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def smoothed_targets(labels: jax.Array, num_classes: int, smoothing: float) -> jax.Array:
    """[B] -> [B, C]: (1 - s) one_hot + s / C (Szegedy et al. label smoothing)."""
    return (1.0 - smoothing) * jax.nn.one_hot(labels, num_classes) + smoothing / num_classes


def cross_entropy(logits: jax.Array, labels: jax.Array, smoothing: float = 0.0) -> jax.Array:
    """-sum_c q_c log p_c with smoothed targets q; [B]."""
    targets = smoothed_targets(labels, logits.shape[-1], smoothing)
    return -jnp.sum(targets * jax.nn.log_softmax(logits), axis=-1)


def focal_loss(
    logits: jax.Array, labels: jax.Array, gamma: float = 2.0, smoothing: float = 0.0
) -> jax.Array:
    """-sum_c q_c (1 - p_c)^gamma log p_c (Lin et al. 2017; gamma = 0 is cross-entropy); [B]."""
    log_p = jax.nn.log_softmax(logits)
    targets = smoothed_targets(labels, logits.shape[-1], smoothing)
    return -jnp.sum(targets * (1.0 - jnp.exp(log_p)) ** gamma * log_p, axis=-1)


def weighted_mean(
    per_example: jax.Array,
    labels: jax.Array,
    class_weights: jax.Array | None = None,
    valid: jax.Array | None = None,
) -> jax.Array:
    """sum_i w_i l_i / sum_i w_i with w_i = class_weights[y_i] * valid_i."""
    weights = jnp.ones_like(per_example)
    if class_weights is not None:
        weights = weights * class_weights[labels]
    if valid is not None:
        weights = weights * valid.astype(per_example.dtype)
    return jnp.sum(weights * per_example) / jnp.maximum(jnp.sum(weights), 1e-12)


def per_example_loss(logits: jax.Array, labels: jax.Array, loss_config) -> jax.Array:
    """`config.loss.name` "cross_entropy" or "focal", with `label_smoothing` (and `gamma`)."""
    if loss_config.name == "cross_entropy":
        return cross_entropy(logits, labels, loss_config.label_smoothing)
    if loss_config.name == "focal":
        return focal_loss(logits, labels, loss_config.focal_gamma, loss_config.label_smoothing)
    raise ValueError(f"loss.name = {loss_config.name!r}; expected 'cross_entropy' or 'focal'.")
