"""The forecaster's parts and pure steps: what train.py, evaluate.py and the benchmark share.

The diffused quantity is the standardised *change* over one lead time, scaled to unit variance
per variable, r = (x_{t+lead} - x_t) / residual_std (GenCast-style residual target; set
`diffusion.residual = False` to diffuse x_{t+lead} itself). `residual_std` [C] is computed from
the training pairs when a run starts and kept in the checkpoint (`TrainState.extra`), so
evaluation uses the exact training scale. The EMA of the parameters, also in `extra`, is
updated inside the step, so it is checkpointed and resumed with everything else.

`build(config, mesh)` returns `Parts`; `benchmark_setup` / `benchmark_sampling` are the hooks of
scripts/benchmark.py (a train step, and ensemble sampling at the full grid).
"""

from __future__ import annotations

import dataclasses
import functools
import time
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from absl import logging

from jaxlab.core import mesh as mesh_lib
from jaxlab.core import optim, rng, run
from jaxlab.core import state as state_lib
from jaxlab.weather import data, diffusion, ensemble
from jaxlab.weather import model as model_lib


@dataclasses.dataclass(frozen=True)
class Parts:
    model: nn.Module
    optimizer: optax.GradientTransformation
    init_fn: Callable[[jax.Array], state_lib.TrainState]
    abstract_state: Any  # TrainState of jax.ShapeDtypeStruct with shardings: the restore target
    shardings: Any  # TrainState of NamedSharding
    num_steps: int
    train_step: Callable  # jitted (state, batch) -> (state, metrics), state donated
    eval_step: Callable  # jitted (params, batch, valid, residual_std) -> (sums, loss [B])
    schedule: diffusion.Schedule  # the noise schedule the network is trained (and sampled) on
    grid_shape: tuple[int, int, int]  # training input [H, W, C]: the crop, or the full grid


def grid_shape(config: ml_collections.ConfigDict) -> tuple[int, int, int]:
    """[H, W, C] of a training example: `data.crop` when set, else the full `data.shape`."""
    height, width = tuple(config.data.crop) or tuple(config.data.shape)
    return (int(height), int(width), len(data.VARIABLES))


def init_state(rng_key, *, model, tx, grid_shape, residual_std) -> state_lib.TrainState:
    """Fresh state; `extra` holds the EMA params (starting at the params) and residual_std [C]."""
    params = model_lib.init_params(model, rng_key, grid_shape)
    extra = {"ema": params, "residual_std": jnp.asarray(residual_std, jnp.float32)}
    return state_lib.create_train_state(params, tx, extra=extra)


def diffusion_input(batch: dict[str, jax.Array], residual_std: jax.Array, residual: bool):
    """x0 to diffuse [B, H, W, C]: the scaled change, or the target state itself."""
    if residual:
        return (batch["target"] - batch["cond"]) / residual_std
    return batch["target"]


def train_step(
    state: state_lib.TrainState,
    batch: dict[str, jax.Array],
    *,
    model: nn.Module,
    tx: Any,
    schedule: diffusion.Schedule,
    prediction: str,
    residual: bool,
    ema_decay: float,
    seed: int,
) -> tuple[state_lib.TrainState, dict[str, jax.Array]]:
    """One optimizer (micro-)step on the noise MSE; the EMA of the params follows every step.

    batch: cond, target [B, H, W, C] standardised states, lead [B] hours, index [B] record ids.
    Diffusion steps and noise come from the stream "diffusion_noise" folded with the step, so
    a resumed run draws exactly the noise of an uninterrupted one.
    """
    key = rng.stream(seed, "diffusion_noise", state.step)
    residual_std = state.extra["residual_std"]
    x0 = diffusion_input(batch, residual_std, residual)
    xt, t, target = diffusion.loss_targets(schedule, x0, key, prediction)

    def loss_fn(params):
        pred = model.apply({"params": params}, xt, batch["cond"], t, batch["lead"])
        return jnp.mean(jnp.square(pred - target))

    loss, grads = jax.value_and_grad(loss_fn)(state.params)
    updates, opt_state = tx.update(grads, state.opt_state, state.params, value=loss)
    params = optax.apply_updates(state.params, updates)
    ema = jax.tree.map(lambda e, p: ema_decay * e + (1 - ema_decay) * p, state.extra["ema"], params)
    metrics = {
        "loss": loss,
        "grad_norm": optax.tree.norm(grads),
        # The sum of record ids: tests compare it step by step to prove the data order resumes.
        "data_checksum": jnp.sum(batch["index"]),
    }
    extra = {"ema": ema, "residual_std": residual_std}
    new = state.replace(step=state.step + 1, params=params, opt_state=opt_state, extra=extra)
    return new, metrics


def eval_step(
    params: Any,
    batch: dict[str, jax.Array],
    valid: jax.Array,
    residual_std: jax.Array,
    *,
    model: nn.Module,
    schedule: diffusion.Schedule,
    prediction: str,
    residual: bool,
    seed: int,
):
    """Noise MSE per example [B] and its sums over valid examples {"loss", "count"}.

    Each example draws its diffusion step and noise from the stream "eval_noise" folded with its
    record index, so the loss of a record is the same in every evaluation and for any batch size.
    """
    x0 = diffusion_input(batch, residual_std, residual)
    keys = jax.vmap(lambda index: rng.stream(seed, "eval_noise", index))(batch["index"])
    xt, t, target = jax.vmap(
        lambda x, key: diffusion.loss_targets(schedule, x[None], key, prediction)
    )(x0, keys)
    pred = model.apply({"params": params}, xt[:, 0], batch["cond"], t[:, 0], batch["lead"])
    per_example = jnp.mean(jnp.square(pred - target[:, 0]), axis=(1, 2, 3))
    weight = valid.astype(jnp.float32)
    sums = {"loss": jnp.sum(weight * per_example), "count": jnp.sum(weight)}
    return sums, per_example


def build(
    config: ml_collections.ConfigDict,
    mesh: jax.sharding.Mesh,
    residual_std: np.ndarray | None = None,
) -> Parts:
    """Model, optimizer, schedule, sharded abstract state and jitted steps for `config` on `mesh`.

    `residual_std` [C] goes into a *new* state (train.py passes the training pairs' value); the
    default, ones, is enough for a restore target or the benchmark.
    """
    dc = config.diffusion
    grid = grid_shape(config)
    model = model_lib.make_model(config)
    tx = optim.make_optimizer(config.optim, config.train.num_steps)
    schedule = diffusion.make_schedule(dc.schedule, dc.num_steps)
    if residual_std is None:
        residual_std = np.ones(grid[-1], np.float32)
    init_fn = functools.partial(
        init_state, model=model, tx=tx, grid_shape=grid, residual_std=residual_std
    )
    abstract, shardings = state_lib.abstract_state(
        init_fn, rng.stream(config.seed, "init"), mesh, config.fsdp_min_size
    )
    loss_args = dict(
        model=model,
        schedule=schedule,
        prediction=dc.prediction,
        residual=dc.residual,
        seed=config.seed,
    )
    train_fn = functools.partial(train_step, tx=tx, ema_decay=config.train.ema_decay, **loss_args)
    return Parts(
        model=model,
        optimizer=tx,
        init_fn=init_fn,
        abstract_state=abstract,
        shardings=shardings,
        num_steps=config.train.num_steps,
        train_step=run.jit_train_step(train_fn, shardings, mesh),
        eval_step=run.jit_eval_step(
            functools.partial(eval_step, **loss_args), mesh, num_extra_args=1
        ),
        schedule=schedule,
        grid_shape=grid,
    )


def benchmark_setup(config: ml_collections.ConfigDict, mesh: jax.sharding.Mesh):
    """(jitted step, state, batch, extras) at the config's training shape; no files written.

    The step is one micro-batch of `train.global_batch_size`; with `optim.grad_accum_steps` = k
    the optimizer updates every k steps (optax.MultiSteps), so an optimizer step costs k step
    times (`extras["optimizer_updates_per_step"]`).
    """
    parts = build(config, mesh)
    state = jax.jit(parts.init_fn, out_shardings=parts.shardings)(rng.stream(config.seed, "init"))
    b, grid = config.train.global_batch_size, parts.grid_shape
    gen = np.random.default_rng(config.seed)
    batch = {
        "cond": gen.normal(size=(b, *grid)).astype(np.float32),
        "target": gen.normal(size=(b, *grid)).astype(np.float32),
        "lead": np.ones((b,), np.float32),
        "index": np.arange(b, dtype=np.int32),
    }
    k = config.optim.grad_accum_steps
    extras = {
        "grad_accum_steps": k,
        "optimizer_updates_per_step": 1.0 / k,
        "grid_points_per_step": b * grid[0] * grid[1],
    }
    return parts.train_step, state, mesh_lib.global_batch(batch, mesh), extras


def benchmark_sampling(config: ml_collections.ConfigDict, mesh: jax.sharding.Mesh):
    """Sampling speed at the config's full grid, for scripts/benchmark.py (its sampling hook).

    One forecast step draws `config.eval.bench_members` members (sharded over devices when they
    divide evenly) with `config.diffusion.sample_steps` solver steps each, i.e. that many network
    evaluations per member at the full `data.shape` grid. Compiled ahead of time (timed
    separately), then run `config.eval.bench_repeats` times; random params, no files.
    """
    ec = config.eval
    parts = build(config, mesh)
    params = jax.jit(parts.init_fn, out_shardings=parts.shardings)(
        rng.stream(config.seed, "init")
    ).params
    grid = (*config.data.shape, len(data.VARIABLES))
    residual_std = jnp.ones(grid[-1], jnp.float32)
    members = ec.bench_members or ec.num_members
    step_fn = ensemble.make_forecast_step(parts.model, parts.schedule, config, mesh, members)
    cond = jnp.zeros((members, *grid), jnp.float32)
    lead = jnp.ones((members,), jnp.float32)
    keys = ensemble.member_keys(rng.stream(config.seed, "ensemble", 0), members, 0)
    start = time.perf_counter()
    compiled = step_fn.lower(params, cond, lead, keys, residual_std).compile()
    compile_s = time.perf_counter() - start
    memory = compiled.memory_analysis()
    logging.info(
        "benchmark_sampling: %d member(s) x %d %s steps on %s, %d run(s) (compiled in %.1f s)",
        members,
        config.diffusion.sample_steps,
        config.diffusion.sampler,
        grid,
        ec.bench_repeats,
        compile_s,
    )
    start = time.perf_counter()
    for _ in range(ec.bench_repeats):
        jax.block_until_ready(compiled(params, cond, lead, keys, residual_std))
    seconds = (time.perf_counter() - start) / ec.bench_repeats
    return {
        "sampling_grid": list(config.data.shape),
        "sampling_sampler": config.diffusion.sampler,
        "sampling_members": members,
        "sampling_solver_steps": config.diffusion.sample_steps,
        "sampling_repeats": ec.bench_repeats,
        "sampling_compile_s": compile_s,
        "sampling_temp_bytes": getattr(memory, "temp_size_in_bytes", None),
        "sampling_s_per_member": seconds / members,
        "sampling_members_per_sec": members / seconds,
    }
