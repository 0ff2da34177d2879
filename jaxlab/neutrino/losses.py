"""Direction losses: angular distance and the 3-D von Mises-Fisher negative log-likelihood.

Both take the model's raw 3-vector `pred` [..., 3] and the unit target [..., 3].

Angular distance: atan2(|a x b|, a . b) for a = pred, b = target. Unlike arccos(a . b / |a|) its
gradient is finite everywhere: arccos' derivative is infinite at +-1 (angles 0 and pi); here the
norms go through `safe_norm`, whose gradient at 0 is 0 instead of NaN, and a zero vector (where
atan2 has no gradient) scores pi / 2 with gradient 0.

von Mises-Fisher (the top Kaggle solutions' loss): kappa = |pred|, mu = pred / kappa,
NLL = -log C3(kappa) - kappa mu . target with C3(kappa) = kappa / (4 pi sinh kappa), i.e.

    log C3 = log kappa - log(2 pi) - kappa - log(1 - exp(-2 kappa))

which is stable for large kappa (no sinh overflow; log1p-style via expm1) and, below
`SMALL_KAPPA`, replaced by its series -log(4 pi) - kappa^2 / 6 (no 0 / 0 at kappa -> 0).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

SMALL_KAPPA = 1e-3


def safe_norm(x: jax.Array, axis: int = -1, keepdims: bool = False) -> jax.Array:
    """|x| with gradient 0 (not NaN) at x = 0 (the double-where trick)."""
    sq = jnp.sum(jnp.square(x), axis=axis, keepdims=keepdims)
    positive = sq > 0
    return jnp.where(positive, jnp.sqrt(jnp.where(positive, sq, 1.0)), 0.0)


def angular_distance(pred: jax.Array, target: jax.Array) -> jax.Array:
    """Angle in radians between `pred` (any norm) and `target`, [..., 3] -> [...]."""
    cross = safe_norm(jnp.cross(pred, target))
    dot = jnp.sum(pred * target, axis=-1)
    # atan2's gradient is 0 / 0 at (0, 0), i.e. when either vector is zero: answer pi / 2 there.
    degenerate = (cross == 0) & (dot == 0)
    angle = jnp.arctan2(cross, jnp.where(degenerate, 1.0, dot))
    return jnp.where(degenerate, jnp.pi / 2, angle)


def log_c3(kappa: jax.Array) -> jax.Array:
    """log of the 3-D vMF normaliser kappa / (4 pi sinh kappa), stable for all kappa >= 0."""
    small = kappa < SMALL_KAPPA
    k = jnp.where(small, 1.0, kappa)
    large_form = jnp.log(k) - jnp.log(2 * jnp.pi) - k - jnp.log(-jnp.expm1(-2.0 * k))
    series = -jnp.log(4 * jnp.pi) - jnp.square(kappa) / 6.0
    return jnp.where(small, series, large_form)


def vmf_nll(pred: jax.Array, target: jax.Array) -> jax.Array:
    """Negative log-likelihood of `target` under vMF(mu = pred / |pred|, kappa = |pred|)."""
    kappa = safe_norm(pred)
    return -log_c3(kappa) - jnp.sum(pred * target, axis=-1)  # kappa mu . target = pred . target


def direction_loss(name: str, pred: jax.Array, target: jax.Array) -> jax.Array:
    """Per-event loss [...]; `name` is "angular" or "vmf"."""
    if name == "angular":
        return angular_distance(pred, target)
    if name == "vmf":
        return vmf_nll(pred, target)
    raise ValueError(f"train.loss must be 'angular' or 'vmf', got {name!r}.")
