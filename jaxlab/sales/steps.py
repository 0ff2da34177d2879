"""The GAN's parts and pure steps: what train.py, evaluate.py and the benchmark share.

`build(config, mesh)` returns `Parts`: the generator (`model`) and the critic, their optimizers,
`init_fn(rng) -> TrainState` (generator in `params`, critic in `extra`, see gan.py), the state's
abstract shape with the mesh's shardings (the restore target), the number of WGAN-GP iterations
and the two steps jitted once. `train_step` is one WGAN-GP iteration (n_critic critic steps, then
one generator step); `eval_step` samples the generator for a batch of conditions and sums the
moments the sample statistics need. The forecasters have their own parts in forecast.py.
"""

from __future__ import annotations

import dataclasses
import functools
import os
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from safetensors import numpy as safetensors_np

from jaxlab.core import bundle as bundle_lib
from jaxlab.core import mesh as mesh_lib
from jaxlab.core import parts as parts_lib
from jaxlab.core import rng
from jaxlab.core import state as state_lib
from jaxlab.sales import data_windows, forecast, gan
from jaxlab.sales import model as model_lib
from jaxlab.sales.model import SPECTRAL, Critic, Generator

WINDOW_KEYS = ("history_sales", "history_features", "target_features", "target", "index")


@dataclasses.dataclass(frozen=True)
class Extras:
    critic: Critic
    critic_optimizer: optax.GradientTransformation


def train_step(
    state: state_lib.TrainState,
    batch: dict[str, jax.Array],
    *,
    key: jax.Array,
    generator: Generator,
    critic: Critic,
    gen_tx: Any,
    critic_tx: Any,
    n_critic: int,
    lambda_gp: float,
    noise_dim: int,
) -> tuple[state_lib.TrainState, dict[str, jax.Array]]:
    """One WGAN-GP iteration. batch: windows [n_critic * B, ...], slice i feeds critic step i.

    key: the run's "gan" stream; the step's keys are its "critic" / "generator" sub-streams folded
    with `state.step`, so a resumed run draws the same noise.
    """
    global_batch = batch["target"].shape[0]
    micro_size = global_batch // n_critic
    # [n_critic * B, ...] -> [n_critic, B, ...]: each device's rows stay on that device.
    micro = {
        k: jnp.swapaxes(batch[k].reshape(micro_size, n_critic, *batch[k].shape[1:]), 0, 1)
        for k in WINDOW_KEYS
    }
    gen_params, cs = state.params, state.extra

    def critic_step(carry, inputs):
        params, spectral, opt_state = carry
        mb, step_key = inputs
        real = mb["target"]
        noise_key, gp_key = jax.random.split(step_key)
        cond = model_lib.condition(mb)
        noise = gan.sample_noise(noise_key, mb["index"], real.shape[1], noise_dim)
        fake = jax.lax.stop_gradient(generator.apply({"params": gen_params}, noise, *cond))

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

            gp = gan.gradient_penalty(critic_fn, real, fake, gp_key)
            wasserstein = jnp.mean(d_real) - jnp.mean(d_fake)
            return -wasserstein + lambda_gp * gp, (new_spectral, wasserstein, gp)

        (loss, (spectral, wasserstein, gp)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
            params
        )
        updates, opt_state = critic_tx.update(grads, opt_state, params)
        params = optax.apply_updates(params, updates)
        return (params, spectral, opt_state), (loss, wasserstein, gp, optax.tree.norm(grads))

    critic_keys = jax.random.split(rng.stream(key, "critic", state.step), n_critic)
    carry = (cs.params, cs.spectral, cs.opt_state)
    (critic_params, spectral, critic_opt_state), (c_loss, w, gp, c_norm) = jax.lax.scan(
        critic_step, carry, (micro, critic_keys)
    )

    # Generator step on the last slice's conditions, against the updated critic.
    last = jax.tree.map(lambda x: x[-1], micro)
    cond = model_lib.condition(last)
    noise = gan.sample_noise(
        rng.stream(key, "generator", state.step), last["index"], last["target"].shape[1], noise_dim
    )

    def gen_loss_fn(p):
        fake = generator.apply({"params": p}, noise, *cond)
        scores = critic.apply({"params": critic_params, SPECTRAL: spectral}, fake, *cond)
        return -jnp.mean(scores), fake

    (g_loss, fake), g_grads = jax.value_and_grad(gen_loss_fn, has_aux=True)(gen_params)
    g_updates, gen_opt_state = gen_tx.update(g_grads, state.opt_state, gen_params)
    new_state = state.replace(
        step=state.step + 1,
        params=optax.apply_updates(gen_params, g_updates),
        opt_state=gen_opt_state,
        extra=gan.CriticState(params=critic_params, spectral=spectral, opt_state=critic_opt_state),
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
        # The sum of window ids: tests compare it step by step to prove the data order resumes.
        "data_checksum": jnp.sum(batch["index"]),
    }
    return new_state, metrics


def eval_step(
    gen_params: Any,
    batch: dict[str, jax.Array],
    valid: jax.Array,
    key: jax.Array,
    *,
    generator: Generator,
    noise_dim: int,
) -> tuple[dict[str, jax.Array], jax.Array]:
    """One sequence per window [B, T] (noise keyed by window index) and sums over valid rows.

    Sums: count (valid values), gen_sum / gen_sq_sum, real_sum / real_sq_sum (first and second
    moments of generated and real targets) and abs_err_sum (|generated - real|); see
    `metrics.sample_statistics`.
    """
    horizon = batch["target_features"].shape[1]
    noise = gan.sample_noise(key, batch["index"], horizon, noise_dim)
    generated = generator.apply({"params": gen_params}, noise, *model_lib.condition(batch))
    weight = valid.astype(jnp.float32)[:, None]
    real = batch["target"]
    sums = {
        "count": jnp.sum(weight) * horizon,
        "gen_sum": jnp.sum(weight * generated),
        "gen_sq_sum": jnp.sum(weight * jnp.square(generated)),
        "real_sum": jnp.sum(weight * real),
        "real_sq_sum": jnp.sum(weight * jnp.square(real)),
        "abs_err_sum": jnp.sum(weight * jnp.abs(generated - real)),
    }
    return sums, generated


def build(config: ml_collections.ConfigDict, mesh: jax.sharding.Mesh) -> parts_lib.Parts[Extras]:
    """Generator, critic, optimizers, sharded abstract state and jitted steps for `config`.

    Built once per (config, mesh) in a process, on a frozen copy of `config` (later changes to
    the caller's config cannot reach the parts): a process that trains then evaluates, resumes a
    preempted run, or trains the study's GAN per fraction asks for the same parts again, and a
    jit's caches are keyed on its function object, so new parts would trace, lower and compile
    the same steps again.
    """
    return _build_frozen(ml_collections.FrozenConfigDict(config), mesh)


@functools.lru_cache(maxsize=8)
def _build_frozen(
    config: ml_collections.FrozenConfigDict, mesh: jax.sharding.Mesh
) -> parts_lib.Parts[Extras]:
    gc, batch_size = config.gan, config.train.global_batch_size
    if batch_size % gc.n_critic:
        raise ValueError(
            f"config.train.global_batch_size ({batch_size}) must be a multiple of "
            f"config.gan.n_critic ({gc.n_critic}): each critic step of an update reads "
            "global_batch_size / n_critic windows."
        )
    generator, critic = model_lib.make_gan(config)
    gen_tx, critic_tx = gan.make_optimizers(config)
    init_fn = functools.partial(
        gan.init_state,
        config=config,
        generator=generator,
        critic=critic,
        gen_tx=gen_tx,
        critic_tx=critic_tx,
    )
    step_fn = functools.partial(
        train_step,
        key=rng.stream(config.seed, "gan"),
        generator=generator,
        critic=critic,
        gen_tx=gen_tx,
        critic_tx=critic_tx,
        n_critic=gc.n_critic,
        lambda_gp=gc.lambda_gp,
        noise_dim=gc.noise_dim,
    )
    sample_fn = functools.partial(eval_step, generator=generator, noise_dim=gc.noise_dim)
    # Two optimizers (generator, critic): no single learning rate to log.
    schedule = parts_lib.Schedule(num_steps=config.train.num_steps, optim_config=None)
    extras = Extras(critic=critic, critic_optimizer=critic_tx)
    return parts_lib.assemble(
        config,
        mesh,
        generator,
        gen_tx,
        init_fn,
        step_fn,
        sample_fn,
        schedule,
        eval_extra_args=1,
        extras=extras,
    )


def random_windows(config: ml_collections.ConfigDict) -> dict[str, np.ndarray]:
    """A global batch of windows with the real shapes and plausible values (benchmark, tests)."""
    dc, n = config.data, config.train.global_batch_size
    gen = np.random.default_rng(config.seed)
    days = np.arange(dc.history + dc.horizon)[None] + gen.integers(0, 7, size=(n, 1))
    temporal = data_windows.temporal_features(days.astype("datetime64[D]").ravel())
    temporal = temporal.reshape(n, -1, data_windows.NUM_TEMPORAL)
    review = gen.random((n, dc.history, data_windows.NUM_FEATURES - data_windows.NUM_TEMPORAL))
    return {
        "history_sales": gen.random((n, dc.history)).astype(np.float32),
        "history_features": np.concatenate([temporal[:, : dc.history], review], -1).astype(
            np.float32
        ),
        "target_features": temporal[:, dc.history :].astype(np.float32),
        "target": gen.random((n, dc.horizon)).astype(np.float32),
        "index": np.arange(n, dtype=np.int32),
    }


def benchmark_setup(config: ml_collections.ConfigDict, mesh: jax.sharding.Mesh):
    """(jitted WGAN-GP iteration, initial state, one global batch of windows, {}); no files."""
    parts = build(config, mesh)
    state = parts_lib.init_state(parts, rng.stream(config.seed, "init"))
    return parts.train_step, state, mesh_lib.global_batch(random_windows(config), mesh), {}


FORECASTER_FILE = "forecaster_real.safetensors"


def bundle_files(config: ml_collections.ConfigDict, workdir: str) -> dict[str, str]:
    """The real-only forecaster's parameters, which `predict` needs beside the generator's.

    Written as safetensors into `workdir/export/` and copied into the bundle by `jaxlab export`.
    """
    forecaster_dir = forecast.forecast_dir(workdir, "real")
    if not os.path.isdir(forecaster_dir):
        return {}
    mesh = mesh_lib.make_mesh([("data", -1)], devices=jax.devices()[:1])
    params, _ = forecast.restore_params(config, forecaster_dir, forecast.build(config, mesh))
    path = os.path.join(workdir, "export", FORECASTER_FILE)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    safetensors_np.save_file(bundle_lib.flatten_params(params), path)
    return {FORECASTER_FILE: path}
