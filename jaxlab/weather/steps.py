"""The forecaster's parts and pure steps: what train.py, evaluate.py and the benchmark share.

The diffused quantity is the standardised *change* over one lead time, scaled to unit variance
per variable, r = (x_{t+lead} - x_t) / residual_std (GenCast-style residual target; set
`diffusion.residual = False` to diffuse x_{t+lead} itself). `residual_std` [C] is computed from
the training pairs when a run starts and kept in the checkpoint (`TrainState.extra`), so
evaluation uses the exact training scale; `residual_mean` [C] (the scaled change's mean) is kept
beside it as the samplers' prior mean. The EMA of the parameters, also in `extra`, is updated
inside the step, so it is checkpointed and resumed with everything else.

Records carry the initial state's hour of day (`WithHour`), the network's `model.use_hour`
input.

`build(config, mesh)` returns `Parts`; `benchmark_setup` / `benchmark_sampling` are the hooks of
scripts/benchmark.py (a train step, and ensemble sampling at the full grid).
"""

from __future__ import annotations

import dataclasses
import functools
import os
import time
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from absl import logging

from jaxlab.core import mesh as mesh_lib
from jaxlab.core import parts as parts_lib
from jaxlab.core import rng
from jaxlab.core import state as state_lib
from jaxlab.weather import data, diffusion, ensemble
from jaxlab.weather import model as model_lib


@dataclasses.dataclass(frozen=True)
class Extras:
    schedule: diffusion.Schedule  # the noise schedule the network is trained (and sampled) on
    grid_shape: tuple[int, int, int]  # training input [H, W, C]: the crop, or the full grid


def grid_shape(config: ml_collections.ConfigDict) -> tuple[int, int, int]:
    """[H, W, C] of a training example: `data.crop` when set, else the full `data.shape`."""
    height, width = tuple(config.data.crop) or tuple(config.data.shape)
    return (int(height), int(width), len(data.VARIABLES))


def hour_of_day(time: np.datetime64) -> np.float32:
    """Hours since 00 UTC of `time`'s day, in [0, 24)."""
    time = np.datetime64(time, "s")
    return np.float32((time - time.astype("datetime64[D]")) / np.timedelta64(1, "h"))


class WithHour:
    """A `data.PairSource` whose records also carry "hour" [] float32: the hour of day UTC of
    the pair's initial state (the diurnal phase the state alone does not give)."""

    def __init__(self, source: data.PairSource):
        self.source = source

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, k: int) -> dict[str, np.ndarray]:
        record = dict(self.source[k])
        record["hour"] = hour_of_day(self.source.times[self.source.pairs[k][0]])
        return record

    def __getattr__(self, name: str):
        return getattr(self.source, name)


def residual_mean(source: data.PairSource, residual_std: np.ndarray, max_pairs: int = 256):
    """Per-variable mean [C] of (target - cond) / residual_std over up to `max_pairs` evenly
    spaced pairs (the pairs `data.residual_std` uses): the samplers' prior mean."""
    picks = np.linspace(0, len(source) - 1, min(max_pairs, len(source))).astype(int)
    diffs = np.stack([source[int(k)]["target"] - source[int(k)]["cond"] for k in picks])
    return (diffs.reshape(-1, diffs.shape[-1]).mean(0) / residual_std).astype(np.float32)


def init_state(
    rng_key, *, model, tx, grid_shape, residual_std, residual_mean
) -> state_lib.TrainState:
    """Fresh state; `extra` holds the EMA params (starting at the params), residual_std [C]
    and residual_mean [C]."""
    params = model_lib.init_params(model, rng_key, grid_shape)
    extra = {
        "ema": params,
        "residual_std": jnp.asarray(residual_std, jnp.float32),
        "residual_mean": jnp.asarray(residual_mean, jnp.float32),
    }
    return state_lib.create_train_state(params, tx, extra=extra)


def diffusion_input(batch: dict[str, jax.Array], residual_std: jax.Array, residual: bool):
    """x0 to diffuse [B, H, W, C]: the scaled change, or the target state itself."""
    if residual:
        return (batch["target"] - batch["cond"]) / residual_std
    return batch["target"]


def deterministic_inputs(x0: jax.Array):
    """(x_t, t, target) of the deterministic forecaster: the same network, fed zeros in place of
    the noisy sample at diffusion step 0, regresses the scaled change x0 [B, H, W, C]."""
    return jnp.zeros_like(x0), jnp.zeros((x0.shape[0],), jnp.int32), x0


def perturbation_inputs(batch: dict[str, jax.Array], key: jax.Array, cond_drop: float):
    """(x0, cond) of DEF's perturbation model: the state itself [B, H, W, C] is both the sample
    and the condition; the condition is zeros (the null condition of classifier-free guidance)
    for a fraction `cond_drop` of the examples (drawn with `key`), so one network gives both the
    conditional and the unconditional noise prediction."""
    state = batch["cond"]
    keep = jax.random.bernoulli(key, 1.0 - cond_drop, (state.shape[0], 1, 1, 1))
    return state, jnp.where(keep, state, 0.0)


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
    use_hour: bool,
    objective: str = "diffusion",
    cond_drop: float = 0.1,
) -> tuple[state_lib.TrainState, dict[str, jax.Array]]:
    """One optimizer (micro-)step on the noise MSE (`objective` "diffusion"), on the MSE of the
    scaled change itself ("mse": the deterministic forecaster) or on the noise MSE of the state
    itself given itself, the condition dropped for `cond_drop` of the examples ("perturbation":
    DEF's perturbation model, `perturbation_inputs`); the EMA follows every step.

    batch: cond, target [B, H, W, C] standardised states, lead [B] hours, hour [B] hour of day
    of cond (used when `use_hour`), index [B] record ids.
    Diffusion steps and noise come from the stream "diffusion_noise" folded with the step, so
    a resumed run draws exactly the noise of an uninterrupted one.
    """
    key = rng.stream(seed, "diffusion_noise", state.step)
    residual_std = state.extra["residual_std"]
    x0, cond = diffusion_input(batch, residual_std, residual), batch["cond"]
    if objective == "mse":  # the deterministic forecaster: no noise, predicts x0 itself
        xt, t, target = deterministic_inputs(x0)
    elif objective == "perturbation":  # DEF's perturbation model
        noise_key, drop_key = jax.random.split(key)
        x0, cond = perturbation_inputs(batch, drop_key, cond_drop)
        xt, t, target = diffusion.loss_targets(schedule, x0, noise_key, prediction)
    else:
        xt, t, target = diffusion.loss_targets(schedule, x0, key, prediction)

    def loss_fn(params):
        pred = model_lib.apply(
            model, params, xt, cond, t, batch["lead"], batch.get("hour"), use_hour
        )
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
    extra = dict(state.extra, ema=ema)
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
    use_hour: bool,
    objective: str = "diffusion",
):
    """Noise MSE (or, `objective` "mse", the change's MSE; "perturbation": the state's noise MSE
    given the state, condition kept) per example [B] and its sums over valid examples
    {"loss", "count"}.

    Each example draws its diffusion step and noise from the stream "eval_noise" folded with its
    record index, so the loss of a record is the same in every evaluation and for any batch size.
    """
    x0 = (
        batch["cond"]
        if objective == "perturbation"
        else diffusion_input(batch, residual_std, residual)
    )
    keys = jax.vmap(lambda index: rng.stream(seed, "eval_noise", index))(batch["index"])
    if objective == "mse":
        xt, t, target = (v[:, None] for v in deterministic_inputs(x0))
    else:
        xt, t, target = jax.vmap(
            lambda x, key: diffusion.loss_targets(schedule, x[None], key, prediction)
        )(x0, keys)
    pred = model_lib.apply(
        model, params, xt[:, 0], batch["cond"], t[:, 0], batch["lead"], batch.get("hour"), use_hour
    )
    per_example = jnp.mean(jnp.square(pred - target[:, 0]), axis=(1, 2, 3))
    weight = valid.astype(jnp.float32)
    sums = {"loss": jnp.sum(weight * per_example), "count": jnp.sum(weight)}
    return sums, per_example


def build(
    config: ml_collections.ConfigDict,
    mesh: jax.sharding.Mesh,
    residual_std: np.ndarray | None = None,
    residual_mean: np.ndarray | None = None,
) -> parts_lib.Parts[Extras]:
    """Model, optimizer, schedule, sharded abstract state and jitted steps for `config` on `mesh`.

    `residual_std` / `residual_mean` [C] go into a *new* state (train.py passes the training
    pairs' values); the defaults, ones and zeros, are enough for a restore target or the
    benchmark.
    """
    dc = config.diffusion
    grid = grid_shape(config)
    model = model_lib.make_model(config)
    run_schedule = parts_lib.step_schedule(config)
    tx = run_schedule.optimizer()
    schedule = diffusion.make_schedule(dc.schedule, dc.num_steps)
    if residual_std is None:
        residual_std = np.ones(grid[-1], np.float32)
    if residual_mean is None:
        residual_mean = np.zeros(grid[-1], np.float32)
    init_fn = functools.partial(
        init_state,
        model=model,
        tx=tx,
        grid_shape=grid,
        residual_std=residual_std,
        residual_mean=residual_mean,
    )
    loss_args = dict(
        model=model,
        schedule=schedule,
        prediction=dc.prediction,
        residual=dc.residual,
        seed=config.seed,
        use_hour=config.model.use_hour,
        objective=config.train.get("objective", "diffusion"),
    )
    train_fn = functools.partial(
        train_step,
        tx=tx,
        ema_decay=config.train.ema_decay,
        cond_drop=config.train.get("cond_drop", 0.1),
        **loss_args,
    )
    return parts_lib.assemble(
        config,
        mesh,
        model,
        tx,
        init_fn,
        train_fn,
        functools.partial(eval_step, **loss_args),
        run_schedule,
        eval_extra_args=1,
        extras=Extras(schedule=schedule, grid_shape=grid),
        init_rng=rng.stream(config.seed, "init"),
    )


def benchmark_setup(config: ml_collections.ConfigDict, mesh: jax.sharding.Mesh):
    """(jitted step, state, batch, extras) at the config's training shape; no files written.

    The step is one micro-batch of `train.global_batch_size`; with `optim.grad_accum_steps` = k
    the optimizer updates every k steps (optax.MultiSteps), so an optimizer step costs k step
    times (`extras["optimizer_updates_per_step"]`).
    """
    parts = build(config, mesh)
    state = parts_lib.init_state(parts, rng.stream(config.seed, "init"))
    b, grid = config.train.global_batch_size, parts.extras.grid_shape
    gen = np.random.default_rng(config.seed)
    batch = {
        "cond": gen.normal(size=(b, *grid)).astype(np.float32),
        "target": gen.normal(size=(b, *grid)).astype(np.float32),
        "lead": np.ones((b,), np.float32),
        "hour": np.zeros((b,), np.float32),
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
    params = parts_lib.init_state(parts, rng.stream(config.seed, "init")).params
    grid = (*config.data.shape, len(data.VARIABLES))
    scale = {"std": jnp.ones(grid[-1], jnp.float32), "mean": jnp.zeros(grid[-1], jnp.float32)}
    members = ec.bench_members or ec.num_members
    step_fn = ensemble.make_forecast_step(parts.model, parts.extras.schedule, config, mesh, members)
    cond = jnp.zeros((members, *grid), jnp.float32)
    lead = jnp.ones((members,), jnp.float32)
    hour = jnp.zeros((members,), jnp.float32)
    keys = ensemble.member_keys(rng.stream(config.seed, "ensemble", 0), members, 0)
    start = time.perf_counter()
    compiled = step_fn.lower(params, cond, lead, hour, keys, scale).compile()
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
        jax.block_until_ready(compiled(params, cond, lead, hour, keys, scale))
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


def inference_params(state: state_lib.TrainState) -> dict[str, Any]:
    """What a forecast needs from a train state, and what an exported bundle holds: the EMA
    parameters and the scale of the diffused change ({"std", "mean"} [C])."""
    return {"ema": state.extra["ema"], "scale": ensemble.scale_of(state.extra)}


def with_inference_params(state: state_lib.TrainState, params: dict[str, Any]):
    """The inverse of `inference_params`, for evaluating a bundle (`config.eval.model`): the EMA
    parameters and the residual scale go back where evaluation reads them."""
    extra = dict(
        state.extra,
        ema=params["ema"],
        residual_std=params["scale"]["std"],
        residual_mean=params["scale"]["mean"],
    )
    return state.replace(params=params["ema"], extra=extra)


def bundle_files(config: ml_collections.ConfigDict, workdir: str) -> dict[str, str]:
    """The store's normalisation statistics the model was trained with, for an exported bundle."""
    path = data.stats_path(data.store_path(config, workdir))
    return {data.STATS_FILE: path} if os.path.exists(path) else {}
