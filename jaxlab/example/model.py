"""A small MLP regressor."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from jaxlab.core import state as state_lib


class MLP(nn.Module):
    hidden: Sequence[int]
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
        """x [B, F] -> prediction [B] (float32)."""
        chex.assert_rank(x, 2)
        h = x.astype(self.dtype)
        for width in self.hidden:
            h = nn.gelu(nn.Dense(width, dtype=self.dtype)(h))
        return nn.Dense(1, dtype=self.dtype)(h)[:, 0].astype(jnp.float32)


def make_model(config: ml_collections.ConfigDict) -> MLP:
    return MLP(hidden=tuple(config.model.hidden), dtype=jnp.dtype(config.model.dtype))


def init_state(rng: jax.Array, *, model: MLP, tx: Any, num_features: int) -> state_lib.TrainState:
    params = model.init(rng, jnp.zeros((1, num_features), jnp.float32))["params"]
    return state_lib.create_train_state(params, tx)
