"""Training loop of the vegetation task: epochs over the training cubes, plateau LR, early stop.

Stages: logging, mesh, input (synthetic cubes written first when configured; normalisation from
the training track, saved in the workdir), model + optimizer (AdamW, global-norm clip, linear
warmup over `warmup_epochs` then reduce-on-plateau), state restored or initialised, one jitted
step, the loop (validation loss, checkpoint and early-stopping bookkeeping once per
`eval_every_epochs`; SIGTERM checkpoints and exits).

Shuffling: grain shuffles the whole training index afresh each epoch (a shuffle buffer as large
as the dataset), seeded, so a resumed run draws the same batches.
"""

from __future__ import annotations

import copy
import functools
import os
from typing import Any

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
from jaxlab.vegetation import data, losses
from jaxlab.vegetation import model as model_lib

EARLY_STOP_FILE = "early_stopping.json"


def schedule(config: ml_collections.ConfigDict, num_train_records: int):
    """(steps per epoch, total steps, optim config with warmup / plateau sizes in steps)."""
    t = config.train
    steps_per_epoch = max(num_train_records // t.global_batch_size, 1)
    num_steps = t.num_steps or t.num_epochs * steps_per_epoch
    optim_config = copy.deepcopy(config.optim)
    optim_config.warmup_steps = min(t.warmup_epochs * steps_per_epoch, num_steps - 1)
    if not optim_config.plateau_accumulation_size:
        optim_config.plateau_accumulation_size = steps_per_epoch
    return steps_per_epoch, num_steps, optim_config


def train_step(state, batch, *, model, tx, config):
    """One AdamW step on the masked delta loss. batch: records stacked [B, ...]."""

    def loss_of(params):
        pred = model.apply({"params": params}, batch)
        return losses.loss_fn(pred, batch, config)

    (loss, parts), grads = jax.value_and_grad(loss_of, has_aux=True)(state.params)
    updates, opt_state = tx.update(grads, state.opt_state, state.params, value=loss)
    params = optax.apply_updates(state.params, updates)
    metrics = {
        "loss": loss,
        **parts,
        "grad_norm": optax.tree.norm(grads),
        "coeff_scale": params["coeff_scale"],
        "data_checksum": jnp.sum(batch["index"]),
    }
    return state.replace(step=state.step + 1, params=params, opt_state=opt_state), metrics


def make_train_step(model, tx, config, shardings, mesh):
    return jax.jit(
        functools.partial(train_step, model=model, tx=tx, config=config),
        in_shardings=(shardings, mesh_lib.data_sharding(mesh)),
        out_shardings=(shardings, mesh_lib.replicated(mesh)),
        donate_argnums=0,
    )


def eval_step(params, batch, valid, *, model, config):
    """Sums over valid records: loss, clear-pixel squared delta error of model and persistence."""
    pred = model.apply({"params": params}, batch)
    w = valid.astype(jnp.float32)
    per_record = jax.vmap(
        lambda p, b: losses.loss_fn(p[None], jax.tree.map(lambda x: x[None], b), config)[0]
    )(pred, batch)
    mask = batch["target_mask"][..., None] * w[:, None, None, None, None]
    true = batch["target_delta"]
    sums = {
        "loss": jnp.sum(w * per_record),
        "records": jnp.sum(w),
        "sq_err": jnp.sum(mask * jnp.square(pred - true)),
        "sq_err_persistence": jnp.sum(mask * jnp.square(true)),
        "count": jnp.sum(mask),
    }
    return sums, pred


def make_eval_step(model, config, mesh):
    return jax.jit(
        functools.partial(eval_step, model=model, config=config),
        in_shardings=(mesh_lib.replicated(mesh), mesh_lib.data_sharding(mesh), None),
        out_shardings=(mesh_lib.replicated(mesh), mesh_lib.replicated(mesh)),
    )


def validation_metrics(step_fn, params, source, mesh, batch_size) -> dict[str, float]:
    """val_loss (mean per record) and delta RMSE of model and persistence on clear pixels."""
    totals = None
    throttle = loop.StepThrottle()
    for local_batch, valid in pipeline.eval_batches(source, global_batch_size=batch_size):
        batch = mesh_lib.global_batch(local_batch, mesh)
        sums, _ = step_fn(params, batch, mesh_lib.global_batch(valid, mesh))
        throttle(sums)
        totals = sums if totals is None else jax.tree.map(jnp.add, totals, sums)
    t = jax.device_get(totals)
    count = max(float(t["count"]), 1.0)
    return {
        "val_loss": float(t["loss"] / t["records"]),
        "val_delta_rmse": float(np.sqrt(t["sq_err"] / count)),
        "val_persistence_delta_rmse": float(np.sqrt(t["sq_err_persistence"] / count)),
    }


def build(config, workdir: str, mesh):
    """Data root, normalisation, model, (num_steps, optim config), init fn, abstract target."""
    root = data.prepare(config, workdir)
    norm = data.normalisation(config, workdir, root)
    train_source = data.load(config, root, config.data.train_track, norm)
    steps_per_epoch, num_steps, optim_config = schedule(config, len(train_source))
    model = model_lib.make_model(config)
    tx = optim.make_optimizer(optim_config, num_steps)
    init_fn = functools.partial(model_lib.init_state, model=model, tx=tx, config=config)
    target, shardings = state_lib.abstract_state(
        init_fn, jax.random.key(config.seed), mesh, config.fsdp_min_size
    )
    return {
        "root": root,
        "norm": norm,
        "train_source": train_source,
        "steps_per_epoch": steps_per_epoch,
        "num_steps": num_steps,
        "optim": optim_config,
        "model": model,
        "tx": tx,
        "init_fn": init_fn,
        "target": target,
        "shardings": shardings,
    }


def random_batch(config, batch_size: int, seed: int) -> dict[str, np.ndarray]:
    """A record batch of plausible random values (benchmark input)."""
    rng = np.random.default_rng(seed)
    batch = jax.tree.map(np.asarray, model_lib.dummy_batch(config, batch_size))
    out = {k: rng.normal(size=v.shape).astype(np.float32) * 0.2 for k, v in batch.items()}
    out["target_mask"] = (rng.random(batch["target_mask"].shape) > 0.4).astype(np.float32)
    lc = rng.integers(0, batch["landcover"].shape[-1], batch["landcover"].shape[:-1])
    out["landcover"] = np.eye(batch["landcover"].shape[-1], dtype=np.float32)[lc]
    out["target_doy"] = (
        (100 + 5 * np.arange(batch["target_doy"].shape[1]))[None]
        .repeat(batch_size, 0)
        .astype(np.float32)
    )
    out["index"] = np.arange(batch_size, dtype=np.int32)
    return out


def benchmark_setup(config: ml_collections.ConfigDict, mesh: jax.sharding.Mesh):
    """(jitted step, state, one global batch) at the config's sizes; writes no files."""
    model = model_lib.make_model(config)
    optim_config = copy.deepcopy(config.optim)
    optim_config.warmup_steps = 10
    optim_config.plateau_accumulation_size = optim_config.plateau_accumulation_size or 10
    tx = optim.make_optimizer(optim_config, 1000)
    init_fn = functools.partial(model_lib.init_state, model=model, tx=tx, config=config)
    state, shardings = state_lib.init_sharded(init_fn, jax.random.key(config.seed), mesh)
    batch = random_batch(config, config.train.global_batch_size, config.seed)
    step = make_train_step(model, tx, config, shardings, mesh)
    return step, state, mesh_lib.global_batch(batch, mesh)


def fresh_early_stopping() -> dict[str, Any]:
    """Early-stopping state before the first evaluation."""
    return {"best": None, "bad_evals": 0, "stopped_at": None}


def load_early_stopping(workdir: str, step: int) -> dict[str, Any]:
    """The early-stopping state that belongs to the checkpoint of `step` (fresh at step 0).

    `early_stopping.json` maps step -> state and gets each step's entry *before* that step's
    checkpoint is saved, so whichever checkpoint a resumed run restores has its entry, including
    an older one when a preemption cut the newest save short (its entry is then ignored, and
    rewritten before that step is checkpointed again).
    """
    if step == 0:
        return fresh_early_stopping()
    path = os.path.join(workdir, EARLY_STOP_FILE)
    states = checkpoint.read_step_entries(path)
    if step not in states:
        logging.warning(
            "%s has no early-stopping state for the restored step %d; counting afresh.", path, step
        )
        return fresh_early_stopping()
    return dict(states[step])


def save_early_stopping(workdir: str, step: int, es: dict[str, Any]) -> None:
    """Records `es` as the state of `step` (before that step's checkpoint is saved)."""
    checkpoint.write_step_entry(os.path.join(workdir, EARLY_STOP_FILE), step, dict(es))


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, float]:
    """Trains (resuming from workdir) until num_epochs or early stopping; returns val metrics."""
    t = config.train
    os.makedirs(workdir, exist_ok=True)
    writer = MetricWriter(workdir)
    writer.write_hparams(config.to_dict())

    # Mesh.
    mesh = mesh_lib.make_mesh(config.mesh)
    mesh_lib.log_topology(mesh)

    # Input and model.
    b = build(config, workdir, mesh)
    val_source = data.load(config, b["root"], config.data.val_track, b["norm"])
    train_iter = pipeline.train_iterator(
        b["train_source"], global_batch_size=t.global_batch_size, seed=config.seed
    )
    num_steps, steps_per_epoch = b["num_steps"], b["steps_per_epoch"]
    logging.info(
        "%d training windows, %d validation cubes; %d steps/epoch, %d steps",
        len(b["train_source"]),
        len(val_source),
        steps_per_epoch,
        num_steps,
    )

    # State (restored when the workdir has a checkpoint).
    manager = checkpoint.make_manager(
        os.path.join(workdir, "checkpoints"),
        max_to_keep=t.max_to_keep,
        best_metric=config.eval.best_metric,
        best_mode=config.eval.best_mode,
        keep_best=t.keep_best,
        async_save=t.async_checkpoint,
    )
    rng = jax.random.key(config.seed)
    shardings = b["shardings"]
    state = checkpoint.restore_or_init(
        manager,
        b["target"],
        lambda: jax.jit(b["init_fn"], out_shardings=shardings)(rng),
        train_iter,
    )
    logging.info("Parameters: %d", state_lib.param_count(state.params))

    # Steps.
    step_fn = make_train_step(b["model"], b["tx"], config, shardings, mesh)
    eval_fn = make_eval_step(b["model"], config, mesh)
    lr_fn = jax.jit(functools.partial(optim.current_learning_rate, b["optim"], num_steps))

    # Loop.
    start_step = int(state.step)
    es = load_early_stopping(workdir, start_step)
    eval_every = t.eval_every_epochs * steps_per_epoch
    progress = loop.Progress(num_steps, t.global_batch_size, start_step)
    profile = loop.ProfileWindow(t.profile_start, t.profile_stop, os.path.join(workdir, "tb"))
    throttle = loop.StepThrottle(t.max_in_flight)
    val_metrics: dict[str, float] = {}
    if es["stopped_at"] is not None:
        logging.info("Early stopping already triggered at step %d.", es["stopped_at"])
        start_step = num_steps
    with loop.Preemption() as preemption:
        for step in range(start_step + 1, num_steps + 1):
            profile.step(step, state)
            batch = mesh_lib.global_batch(next(train_iter), mesh)
            state, metrics = step_fn(state, batch)
            throttle(metrics)

            preempted = preemption.requested(step)
            last = step == num_steps
            evaluate_now = loop.every(step, eval_every) or last
            if loop.every(step, t.log_every) or evaluate_now or preempted:
                metrics = jax.device_get(metrics)
                loop.check_finite(step, metrics)
                lr = lr_fn(state.opt_state, state.step)
                scalars = {**metrics, **progress.report(step, metrics), "lr": lr}
                writer.write_scalars(step, {**scalars, "epoch": step / steps_per_epoch})
            stop = False
            if evaluate_now:
                val_metrics = validation_metrics(
                    eval_fn, state.params, val_source, mesh, config.eval.global_batch_size
                )
                writer.write_scalars(step, val_metrics)
                loss = val_metrics["val_loss"]
                if es["best"] is None or loss < es["best"] - t.early_stopping_min_delta:
                    es["best"], es["bad_evals"] = loss, 0
                else:
                    es["bad_evals"] += 1
                if es["bad_evals"] >= t.early_stopping_patience:
                    stop = True
                    es["stopped_at"] = step
                    logging.info(
                        "Early stopping at step %d (best val_loss %.4g).", step, es["best"]
                    )
            if evaluate_now or preempted:
                save_early_stopping(workdir, step, es)  # first: see load_early_stopping
                checkpoint.save(
                    manager, step, state, train_iter, metrics=val_metrics if evaluate_now else None
                )
            if preempted:
                logging.warning("Preempted: checkpointed step %d, exiting.", step)
                break
            if stop:
                break
    checkpoint.wait(manager)
    manager.close()
    writer.close()
    return val_metrics
