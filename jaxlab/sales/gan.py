"""Conditional WGAN-GP (Gulrajani et al. 2017): the state's critic half, optimizers, penalty, noise.

The train state is the core `TrainState`: `params` / `opt_state` are the generator's (the model
that is sampled and evaluated) and `extra` is a `CriticState` (the critic's parameters, its
power-iteration vectors and its optimizer state), so one pytree holds both networks, is jitted once
with donated buffers and is checkpointed as one item. The update itself is `steps.train_step`.

Critic loss:     -(E[D(x_real)] - E[D(G(z))]) + lambda_gp * E[(|grad_x D(x_hat)|_2 - 1)^2],
                 x_hat = e x_real + (1 - e) G(z), e ~ U[0, 1] per sample (the condition is fixed).
Generator loss:  -E[D(G(z))].
"""

from __future__ import annotations

from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import ml_collections
import optax

from jaxlab.core import state as state_lib
from jaxlab.sales.data_windows import NUM_FEATURES, NUM_TEMPORAL
from jaxlab.sales.model import SPECTRAL, Critic, Generator


@flax.struct.dataclass
class CriticState:
    params: Any
    spectral: Any  # the critic's power-iteration vectors u
    opt_state: Any


def make_optimizers(config: ml_collections.ConfigDict):
    """(generator, critic) Adam (betas (0, 0.9) in WGAN-GP), learning rates lr_g and lr_d."""
    gc = config.gan
    gen_tx = optax.adam(gc.lr_g, b1=gc.b1, b2=gc.b2)
    critic_tx = optax.adam(gc.lr_d, b1=gc.b1, b2=gc.b2)
    return gen_tx, critic_tx


def dummy_condition(config: ml_collections.ConfigDict, batch: int = 1):
    """Zero condition inputs (history_sales [B, H], history_features [B, H, 10], target
    features [B, T, 8]) for initialising the modules."""
    dc = config.data
    return (
        jnp.zeros((batch, dc.history), jnp.float32),
        jnp.zeros((batch, dc.history, NUM_FEATURES), jnp.float32),
        jnp.zeros((batch, dc.horizon, NUM_TEMPORAL), jnp.float32),
    )


def init_state(
    rng: jax.Array,
    *,
    config: ml_collections.ConfigDict,
    generator: Generator,
    critic: Critic,
    gen_tx: Any,
    critic_tx: Any,
) -> state_lib.TrainState:
    """Step 0: generator params / opt state in the state, the critic's in `extra`."""
    gen_rng, critic_rng = jax.random.split(rng)
    cond = dummy_condition(config)
    noise = jnp.zeros((1, config.data.horizon, config.gan.noise_dim), jnp.float32)
    gen_params = generator.init(gen_rng, noise, *cond)["params"]
    sequence = jnp.zeros((1, config.data.horizon), jnp.float32)
    critic_vars = critic.init(critic_rng, sequence, *cond)
    critic_state = CriticState(
        params=critic_vars["params"],
        spectral=critic_vars[SPECTRAL],
        opt_state=critic_tx.init(critic_vars["params"]),
    )
    return state_lib.create_train_state(gen_params, gen_tx, extra=critic_state)


def gradient_penalty(critic_fn, real: jax.Array, fake: jax.Array, rng: jax.Array) -> jax.Array:
    """E[(|grad_x critic_fn(x_hat)|_2 - 1)^2] over per-sample interpolates; real, fake [B, T].

    `critic_fn` maps [B, T] -> [B] with no coupling between rows, so the gradient of the summed
    scores holds each sample's own input gradient.
    """
    eps = jax.random.uniform(rng, (real.shape[0], 1), real.dtype)
    x_hat = eps * real + (1.0 - eps) * fake
    grads = jax.grad(lambda x: jnp.sum(critic_fn(x)))(x_hat)
    norms = jnp.sqrt(jnp.sum(jnp.square(grads), axis=-1) + 1e-12)
    return jnp.mean(jnp.square(norms - 1.0))


def sample_noise(rng: jax.Array, index: jax.Array, horizon: int, noise_dim: int) -> jax.Array:
    """Noise [B, T, Z] keyed by each window's index: independent of batch layout and devices."""
    return jax.vmap(lambda i: jax.random.normal(jax.random.fold_in(rng, i), (horizon, noise_dim)))(
        index
    )
