"""Training loop of the conditional diffusion forecaster (epsilon- or v-prediction, EMA params).

The diffused quantity is the standardised *change* over one lead time, scaled to unit variance
per variable, r = (x_{t+lead} - x_t) / residual_std (GenCast-style residual target; set
`diffusion.residual = False` to diffuse x_{t+lead} itself). `residual_std` is computed from the
training pairs at init and kept in the checkpoint (`TrainState.extra`), so evaluation uses the
exact training scale.
"""

from __future__ import annotations

import functools
import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from absl import logging

from jaxlab.core import checkpoint, loop, optim
from jaxlab.core import mesh as mesh_lib
from jaxlab.core import state as state_lib
from jaxlab.core.writer import MetricWriter
from jaxlab.data import pipeline
from jaxlab.weather import data, diffusion, synthetic
from jaxlab.weather import model as model_lib


def prepare(config: ml_collections.ConfigDict, workdir: str) -> str:
    """The Zarr store path; writes synthetic GRIB2 files and converts them first if configured."""
    dc = config.data
    data_dir = dc.dir or os.path.join(workdir, "data")
    store = os.path.join(data_dir, "hrrr.zarr")
    if dc.synthetic and jax.process_index() == 0:
        grib_dir = os.path.join(data_dir, "grib")
        paths = synthetic.write_dataset(
            grib_dir, shape=tuple(dc.shape), num_times=dc.num_times, dx_m=dc.dx_m, seed=config.seed
        )
        if not os.path.exists(store):
            data.prepare_zarr(paths, store, train_fraction=dc.train_fraction, missing=dc.missing)
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices("weather_prepare")
    return store


def residual_std(source: data.PairSource, max_pairs: int = 256) -> np.ndarray:
    """Per-variable std of (target - cond) over (up to `max_pairs` evenly spaced) train pairs."""
    picks = np.linspace(0, len(source) - 1, min(max_pairs, len(source))).astype(int)
    diffs = np.stack([source[int(k)]["target"] - source[int(k)]["cond"] for k in picks])
    return np.maximum(diffs.reshape(-1, diffs.shape[-1]).std(0), 1e-3).astype(np.float32)


def diffusion_input(config, batch, res_std):
    """x0 to diffuse [B, H, W, C]: the scaled change, or the target state itself."""
    if config.diffusion.residual:
        return (batch["target"] - batch["cond"]) / res_std
    return batch["target"]


def apply_eps(model, params, sched, prediction, xt, cond, t, lead):
    """The network's output converted to an epsilon prediction."""
    out = model.apply({"params": params}, xt, cond, t, lead)
    return out if prediction == "eps" else diffusion.eps_from_v(sched, xt, t, out)


def loss_fn(params, model, sched, config, batch, res_std, key):
    x0 = diffusion_input(config, batch, res_std)
    xt, t, target = diffusion.loss_targets(sched, x0, key, config.diffusion.prediction)
    pred = model.apply({"params": params}, xt, batch["cond"], t, batch["lead"])
    return jnp.mean(jnp.square(pred - target))


def train_step(
    state: state_lib.TrainState, batch: dict[str, jax.Array], *, model, tx, sched, config
) -> tuple[state_lib.TrainState, dict[str, jax.Array]]:
    """One optimizer (micro-)step on the noise MSE; EMA of params updated every step."""
    key = jax.random.fold_in(jax.random.key(config.seed), state.step)
    res_std = state.extra["residual_std"]
    loss, grads = jax.value_and_grad(loss_fn)(
        state.params, model, sched, config, batch, res_std, key
    )
    updates, opt_state = tx.update(grads, state.opt_state, state.params, value=loss)
    params = optax.apply_updates(state.params, updates)
    decay = config.train.ema_decay
    ema = jax.tree.map(lambda e, p: decay * e + (1 - decay) * p, state.extra["ema"], params)
    metrics = {
        "loss": loss,
        "grad_norm": optax.tree.norm(grads),
        "data_checksum": jnp.sum(batch["index"]),
    }
    extra = {"ema": ema, "residual_std": res_std}
    new = state.replace(step=state.step + 1, params=params, opt_state=opt_state, extra=extra)
    return new, metrics


def make_train_step(model, tx, sched, config, shardings, mesh):
    return jax.jit(
        functools.partial(train_step, model=model, tx=tx, sched=sched, config=config),
        in_shardings=(shardings, mesh_lib.data_sharding(mesh)),
        out_shardings=(shardings, mesh_lib.replicated(mesh)),
        donate_argnums=0,
    )


def eval_loss_step(params, batch, valid, res_std, *, model, sched, config):
    """Sum of per-example noise MSE over valid examples, with a fixed key (comparable evals)."""
    x0 = diffusion_input(config, batch, res_std)
    key = jax.random.fold_in(jax.random.key(config.seed + 1), jnp.sum(batch["index"]))
    xt, t, target = diffusion.loss_targets(sched, x0, key, config.diffusion.prediction)
    pred = model.apply({"params": params}, xt, batch["cond"], t, batch["lead"])
    per_example = jnp.mean(jnp.square(pred - target), axis=(1, 2, 3))
    w = valid.astype(jnp.float32)
    return {"loss": jnp.sum(w * per_example), "count": jnp.sum(w)}


def make_eval_loss_step(model, sched, config, mesh):
    return jax.jit(
        functools.partial(eval_loss_step, model=model, sched=sched, config=config),
        in_shardings=(
            mesh_lib.replicated(mesh),
            mesh_lib.data_sharding(mesh),
            mesh_lib.data_sharding(mesh),
            mesh_lib.replicated(mesh),
        ),
        out_shardings=mesh_lib.replicated(mesh),
    )


def eval_loss(step_fn, params, res_std, source, mesh, config) -> dict[str, float]:
    """Denoising loss of the EMA params on the first `eval.loss_examples` eval pairs."""
    n = min(len(source), config.eval.loss_examples)
    subset = _Subset(source, n)
    totals = None
    throttle = loop.StepThrottle(config.train.max_in_flight)
    for local, valid in pipeline.eval_batches(
        subset, global_batch_size=config.eval.global_batch_size
    ):
        sums = step_fn(
            params, mesh_lib.global_batch(local, mesh), mesh_lib.global_batch(valid, mesh), res_std
        )
        throttle(sums["loss"])
        totals = sums if totals is None else jax.tree.map(jnp.add, totals, sums)
    totals = jax.device_get(totals)
    return {"eval_loss": float(totals["loss"] / totals["count"])}


class _Subset:
    def __init__(self, source, n):
        self.source, self.n = source, n

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        return self.source[i]


def init_state(rng, *, model, tx, grid_shape, res_std) -> state_lib.TrainState:
    params = model_lib.init_params(model, rng, grid_shape)
    extra = {"ema": params, "residual_std": jnp.asarray(res_std, jnp.float32)}
    return state_lib.create_train_state(params, tx, extra=extra)


def build(config, mesh, grid_shape, res_std):
    """(model, tx, schedule, init_fn, abstract target, shardings)."""
    model = model_lib.make_model(config)
    tx = optim.make_optimizer(config.optim, config.train.num_steps)
    sched = diffusion.make_schedule(config.diffusion.schedule, config.diffusion.num_steps)
    init_fn = functools.partial(
        init_state, model=model, tx=tx, grid_shape=grid_shape, res_std=res_std
    )
    target, shardings = state_lib.abstract_state(
        init_fn, jax.random.key(config.seed), mesh, config.fsdp_min_size
    )
    return model, tx, sched, init_fn, target, shardings


def train_grid_shape(config, source) -> tuple[int, int, int]:
    crop = tuple(config.data.crop) if config.data.crop else None
    return (*crop, source.shape[-1]) if crop else source.shape


def benchmark_setup(config: ml_collections.ConfigDict, mesh: jax.sharding.Mesh):
    """(jitted step, state, batch, extras) at the config's training shape; no files written.

    The step is one micro-batch of `train.global_batch_size`; with `optim.grad_accum_steps` = k
    the optimizer updates every k steps (optax.MultiSteps), so an optimizer step costs k step
    times (`extras["optimizer_updates_per_sec"]` in the benchmark report).
    """
    crop = tuple(config.data.crop) if config.data.crop else tuple(config.data.shape)
    channels = len(config.data.variables)
    grid = (*crop, channels)
    res_std = np.ones(channels, np.float32)
    model, tx, sched, init_fn, _, shardings = build(config, mesh, grid, res_std)
    state = jax.jit(init_fn, out_shardings=shardings)(jax.random.key(config.seed))
    b = config.train.global_batch_size
    rng = np.random.default_rng(config.seed)
    batch = {
        "cond": rng.normal(size=(b, *grid)).astype(np.float32),
        "target": rng.normal(size=(b, *grid)).astype(np.float32),
        "lead": np.ones((b,), np.float32),
        "index": np.arange(b, dtype=np.int32),
    }
    step = make_train_step(model, tx, sched, config, shardings, mesh)
    k = config.optim.grad_accum_steps
    extras = {  # one step is one micro-batch; an optimizer update takes k of them
        "grad_accum_steps": k,
        "optimizer_updates_per_step": 1.0 / k,
        "grid_points_per_step": b * crop[0] * crop[1],
    }
    return step, state, mesh_lib.global_batch(batch, mesh), extras


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, float]:
    """Trains to `config.train.num_steps`, resuming from `workdir`; returns the last eval loss."""
    tc = config.train
    writer = MetricWriter(workdir)
    writer.write_hparams(config.to_dict())

    # Mesh.
    mesh = mesh_lib.make_mesh(config.mesh)
    mesh_lib.log_topology(mesh)

    # Input: GRIB2 -> Zarr (synthetic when configured), pairs, random crops.
    store = prepare(config, workdir)
    leads = tuple(config.data.leads)
    train_source = data.PairSource(store, "train", leads, config.data.preload_max_mb)
    eval_source = data.PairSource(store, "eval", leads, config.data.preload_max_mb)
    crop = tuple(config.data.crop) if config.data.crop else None
    train_iter = pipeline.train_iterator(
        train_source,
        global_batch_size=tc.global_batch_size,
        seed=config.seed,
        random_transform=data.random_crop(crop),
    )
    res_std = residual_std(train_source)
    logging.info("Residual std per variable %s: %s", data.VARIABLES, np.round(res_std, 3))

    # Model, optimizer, state.
    grid = train_grid_shape(config, train_source)
    model, tx, sched, init_fn, target, shardings = build(config, mesh, grid, res_std)
    rng = jax.random.key(config.seed)
    manager = checkpoint.make_manager(
        os.path.join(workdir, "checkpoints"),
        max_to_keep=tc.max_to_keep,
        best_metric=config.eval.best_metric,
        best_mode=config.eval.best_mode,
        keep_best=tc.keep_best,
        async_save=tc.async_checkpoint,
    )
    state = checkpoint.restore_or_init(
        manager, target, lambda: jax.jit(init_fn, out_shardings=shardings)(rng), train_iter
    )
    logging.info("Parameters: %d", state_lib.param_count(state.params))

    # Steps.
    step_fn = make_train_step(model, tx, sched, config, shardings, mesh)
    eval_fn = make_eval_loss_step(model, sched, config, mesh)
    lr_fn = jax.jit(functools.partial(optim.current_learning_rate, config.optim, tc.num_steps))

    # Loop.
    start_step = int(state.step)
    progress = loop.Progress(tc.num_steps, tc.global_batch_size, start_step)
    profile = loop.ProfileWindow(tc.profile_start, tc.profile_stop, os.path.join(workdir, "tb"))
    throttle = loop.StepThrottle(tc.max_in_flight)
    eval_metrics: dict[str, float] = {}
    with loop.Preemption() as preemption:
        for step in range(start_step + 1, tc.num_steps + 1):
            profile.step(step, state)
            batch = mesh_lib.global_batch(next(train_iter), mesh)
            state, metrics = step_fn(state, batch)
            throttle(metrics["loss"])

            preempted = preemption.requested(step)
            last = step == tc.num_steps
            save = loop.every(step, tc.ckpt_every) or last or preempted
            if loop.every(step, tc.log_every) or save:
                metrics = jax.device_get(metrics)
                loop.check_finite(step, metrics)
                lr = lr_fn(state.opt_state, state.step)
                writer.write_scalars(step, {**metrics, **progress.report(step, metrics), "lr": lr})
            metrics_for_ckpt = None
            if loop.every(step, tc.eval_every) or last:
                eval_metrics = eval_loss(
                    eval_fn,
                    state.extra["ema"],
                    state.extra["residual_std"],
                    eval_source,
                    mesh,
                    config,
                )
                writer.write_scalars(step, eval_metrics)
                metrics_for_ckpt = eval_metrics
            if save:
                checkpoint.save(manager, step, state, train_iter, metrics=metrics_for_ckpt)
            if preempted:
                logging.warning("Preempted: checkpointed step %d, exiting.", step)
                break
    checkpoint.wait(manager)
    manager.close()
    writer.close()
    return eval_metrics
