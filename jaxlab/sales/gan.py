"""Conditional WGAN-GP (Gulrajani et al. 2017): state, gradient penalty and the one pure update.

One call of `gan_update` is one WGAN-GP iteration: `n_critic` critic steps (a `lax.scan`, each on
its own slice of the real batch and fresh noise), then one generator step. Both networks, the
critic's power-iteration vectors and both optimizers live in one `GanState` pytree, so the update
is jitted once with donated buffers and checkpointed as one item.

Critic loss:     -(E[D(x_real)] - E[D(G(z))]) + lambda_gp * E[(|grad_x D(x_hat)|_2 - 1)^2],
                 x_hat = e x_real + (1 - e) G(z), e ~ U[0, 1] per sample (the condition is fixed).
Generator loss:  -E[D(G(z))].
"""

from __future__ import annotations

import functools
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import ml_collections
import optax

from jaxlab.core import mesh as mesh_lib
from jaxlab.sales import model as model_lib
from jaxlab.sales.data import NUM_FEATURES, NUM_TEMPORAL
from jaxlab.sales.model import SPECTRAL, Critic, Generator

WINDOW_KEYS = ("history_sales", "history_features", "target_features", "target", "index")


@flax.struct.dataclass
class GanState:
    step: jax.Array  # int32 scalar: WGAN-GP iterations done
    gen_params: Any
    critic_params: Any
    spectral: Any  # the critic's power-iteration vectors u
    gen_opt_state: Any
    critic_opt_state: Any


def make_optimizers(config: ml_collections.ConfigDict):
    """Adam for each network (betas (0, 0.9) in WGAN-GP), learning rates lr_g and lr_d."""
    gc = config.gan
    gen_tx = optax.adam(gc.lr_g, b1=gc.b1, b2=gc.b2)
    critic_tx = optax.adam(gc.lr_d, b1=gc.b1, b2=gc.b2)
    return gen_tx, critic_tx


def dummy_condition(config: ml_collections.ConfigDict, batch: int = 1):
    dc = config.data
    return (
        jnp.zeros((batch, dc.history), jnp.float32),
        jnp.zeros((batch, dc.history, NUM_FEATURES), jnp.float32),
        jnp.zeros((batch, dc.horizon, NUM_TEMPORAL), jnp.float32),
    )


def init_gan_state(
    rng: jax.Array, *, config: ml_collections.ConfigDict, generator, critic, gen_tx, critic_tx
) -> GanState:
    gen_rng, critic_rng = jax.random.split(rng)
    cond = dummy_condition(config)
    noise = jnp.zeros((1, config.data.horizon, config.gan.noise_dim), jnp.float32)
    gen_params = generator.init(gen_rng, noise, *cond)["params"]
    sequence = jnp.zeros((1, config.data.horizon), jnp.float32)
    critic_vars = critic.init(critic_rng, sequence, *cond)
    return GanState(
        step=jnp.zeros((), jnp.int32),
        gen_params=gen_params,
        critic_params=critic_vars["params"],
        spectral=critic_vars[SPECTRAL],
        gen_opt_state=gen_tx.init(gen_params),
        critic_opt_state=critic_tx.init(critic_vars["params"]),
    )


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


def gan_update(
    state: GanState,
    batch: dict[str, jax.Array],
    *,
    rng: jax.Array,
    generator: Generator,
    critic: Critic,
    gen_tx: Any,
    critic_tx: Any,
    n_critic: int,
    lambda_gp: float,
    noise_dim: int,
) -> tuple[GanState, dict[str, jax.Array]]:
    """One WGAN-GP iteration. batch: windows [n_critic * B, ...]; rng: the run's root key (the
    step's key is `fold_in(rng, state.step)`, so a resumed run draws the same noise)."""
    step_rng = jax.random.fold_in(rng, state.step)
    global_batch = batch["target"].shape[0]
    micro_size = global_batch // n_critic
    # [n_critic * B, ...] -> [n_critic, B, ...]: each device's rows stay on that device.
    micro = {
        k: jnp.swapaxes(batch[k].reshape(micro_size, n_critic, *batch[k].shape[1:]), 0, 1)
        for k in WINDOW_KEYS
    }

    def critic_step(carry, inputs):
        params, spectral, opt_state = carry
        mb, key = inputs
        real = mb["target"]
        noise_key, gp_key = jax.random.split(key)
        cond = model_lib.condition(mb)
        noise = sample_noise(noise_key, mb["index"], real.shape[1], noise_dim)
        fake = jax.lax.stop_gradient(generator.apply({"params": state.gen_params}, noise, *cond))

        def loss_fn(p):
            both = jax.tree.map(lambda c: jnp.concatenate([c, c]), cond)
            scores, updates = critic.apply(
                {"params": p, SPECTRAL: spectral},
                jnp.concatenate([real, fake]),
                *both,
                update_stats=True,
                mutable=[SPECTRAL],
            )
            new_spectral = updates[SPECTRAL]
            d_real, d_fake = jnp.split(scores, 2)

            def critic_fn(x):
                return critic.apply({"params": p, SPECTRAL: new_spectral}, x, *cond)

            gp = gradient_penalty(critic_fn, real, fake, gp_key)
            wasserstein = jnp.mean(d_real) - jnp.mean(d_fake)
            return -wasserstein + lambda_gp * gp, (new_spectral, wasserstein, gp)

        (loss, (spectral, wasserstein, gp)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
            params
        )
        updates, opt_state = critic_tx.update(grads, opt_state, params)
        params = optax.apply_updates(params, updates)
        return (params, spectral, opt_state), (loss, wasserstein, gp, optax.tree.norm(grads))

    keys = jax.random.split(jax.random.fold_in(step_rng, 0), n_critic)
    carry = (state.critic_params, state.spectral, state.critic_opt_state)
    (critic_params, spectral, critic_opt_state), (c_loss, w, gp, c_norm) = jax.lax.scan(
        critic_step, carry, (micro, keys)
    )

    # Generator step on the last slice's conditions, against the updated critic.
    last = jax.tree.map(lambda x: x[-1], micro)
    cond = model_lib.condition(last)
    noise = sample_noise(
        jax.random.fold_in(step_rng, 1), last["index"], last["target"].shape[1], noise_dim
    )

    def gen_loss_fn(gp_params):
        fake = generator.apply({"params": gp_params}, noise, *cond)
        scores = critic.apply({"params": critic_params, SPECTRAL: spectral}, fake, *cond)
        return -jnp.mean(scores), fake

    (g_loss, fake), g_grads = jax.value_and_grad(gen_loss_fn, has_aux=True)(state.gen_params)
    g_updates, gen_opt_state = gen_tx.update(g_grads, state.gen_opt_state, state.gen_params)
    gen_params = optax.apply_updates(state.gen_params, g_updates)

    new_state = state.replace(
        step=state.step + 1,
        gen_params=gen_params,
        critic_params=critic_params,
        spectral=spectral,
        gen_opt_state=gen_opt_state,
        critic_opt_state=critic_opt_state,
    )
    metrics = {
        "loss": jnp.mean(c_loss),
        "critic_loss": jnp.mean(c_loss),
        "wasserstein": jnp.mean(w),
        "gradient_penalty": jnp.mean(gp),
        "gen_loss": g_loss,
        "critic_grad_norm": jnp.mean(c_norm),
        "gen_grad_norm": optax.tree.norm(g_grads),
        "fake_mean": jnp.mean(fake),
        "real_mean": jnp.mean(batch["target"]),
        "data_checksum": jnp.sum(batch["index"]),
    }
    return new_state, metrics


def make_gan_update(config, generator, critic, gen_tx, critic_tx, shardings, mesh):
    """`gan_update(state, batch)` jitted once with explicit shardings; the state is donated."""
    gc = config.gan
    fn = functools.partial(
        gan_update,
        rng=jax.random.fold_in(jax.random.key(config.seed), 1),
        generator=generator,
        critic=critic,
        gen_tx=gen_tx,
        critic_tx=critic_tx,
        n_critic=gc.n_critic,
        lambda_gp=gc.lambda_gp,
        noise_dim=gc.noise_dim,
    )
    return jax.jit(
        fn,
        in_shardings=(shardings, mesh_lib.data_sharding(mesh)),
        out_shardings=(shardings, mesh_lib.replicated(mesh)),
        donate_argnums=0,
    )


def make_sampler(generator: Generator, noise_dim: int, mesh):
    """Jitted (gen_params, window batch, rng) -> sequences [B, T]; noise keyed by window index."""

    def sample(gen_params, batch, rng):
        horizon = batch["target_features"].shape[1]
        noise = sample_noise(rng, batch["index"], horizon, noise_dim)
        return generator.apply({"params": gen_params}, noise, *model_lib.condition(batch))

    return jax.jit(
        sample,
        in_shardings=(mesh_lib.replicated(mesh), mesh_lib.data_sharding(mesh), None),
        out_shardings=mesh_lib.replicated(mesh),
    )
