"""The LSTM forecaster: its train step, prediction pass and its own explicit, resumable loop.

The same loop trains the three forecasters of the augmentation study from the same seed:
"real" (real windows), "augmented" (real + generated, ratio configurable) and "synthetic"
(generated only: train on synthetic, test on real). Each lives in `workdir/forecast_<name>/`
with its own checkpoints (best by validation MAE) and metrics.jsonl.
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
from absl import logging

from jaxlab.core import checkpoint, loop, optim
from jaxlab.core import mesh as mesh_lib
from jaxlab.core import state as state_lib
from jaxlab.core.writer import MetricWriter
from jaxlab.data import pipeline
from jaxlab.sales import gan as gan_lib
from jaxlab.sales import model as model_lib
from jaxlab.sales.model import Forecaster

NAMES = ("real", "augmented", "synthetic")


def forecast_dir(workdir: str, name: str) -> str:
    return os.path.join(workdir, f"forecast_{name}")


def init_state(rng: jax.Array, *, config, model: Forecaster, tx: Any) -> state_lib.TrainState:
    params = model.init(rng, *gan_lib.dummy_condition(config))["params"]
    return state_lib.create_train_state(params, tx)


def train_step(state, batch, *, model: Forecaster, tx: Any):
    """One step on the mean squared error over the 7 target days."""

    def loss_fn(params):
        pred = model.apply({"params": params}, *model_lib.condition(batch))
        return jnp.mean(jnp.square(pred - batch["target"]))

    loss, grads = jax.value_and_grad(loss_fn)(state.params)
    updates, opt_state = tx.update(grads, state.opt_state, state.params, value=loss)
    params = optax.apply_updates(state.params, updates)
    metrics = {
        "loss": loss,
        "grad_norm": optax.tree.norm(grads),
        "data_checksum": jnp.sum(batch["index"]),
    }
    return state.replace(step=state.step + 1, params=params, opt_state=opt_state), metrics


def make_train_step(model, tx, shardings, mesh):
    return jax.jit(
        functools.partial(train_step, model=model, tx=tx),
        in_shardings=(shardings, mesh_lib.data_sharding(mesh)),
        out_shardings=(shardings, mesh_lib.replicated(mesh)),
        donate_argnums=0,
    )


def make_predict(model: Forecaster, mesh):
    return jax.jit(
        lambda params, batch: model.apply({"params": params}, *model_lib.condition(batch)),
        in_shardings=(mesh_lib.replicated(mesh), mesh_lib.data_sharding(mesh)),
        out_shardings=mesh_lib.replicated(mesh),
    )


def batched_map(fn, source, mesh, batch_size: int) -> np.ndarray:
    """`fn(global batch) -> [B, ...]` over one ordered pass of `source`; returns [N, ...]."""
    outputs = []
    for local_batch, _ in pipeline.eval_batches(source, global_batch_size=batch_size):
        outputs.append(fn(mesh_lib.global_batch(local_batch, mesh)))
    return np.concatenate(jax.device_get(outputs))[: len(source)]


def predict(predict_fn, params, source, mesh, batch_size: int) -> np.ndarray:
    """Forecasts [N, T] (normalised) of every window of `source`, in order."""
    return batched_map(lambda batch: predict_fn(params, batch), source, mesh, batch_size)


def val_metrics(predict_fn, params, source, mesh, batch_size) -> dict[str, float]:
    pred = predict(predict_fn, params, source, mesh, batch_size)
    target = np.stack([source[i]["target"] for i in range(len(source))])
    return {
        "val_mae": float(np.mean(np.abs(pred - target))),
        "val_rmse": float(np.sqrt(np.mean(np.square(pred - target)))),
    }


def make_manager(workdir: str, config, read_only: bool = False):
    return checkpoint.make_manager(
        os.path.join(workdir, "checkpoints"),
        max_to_keep=config.train.max_to_keep,
        best_metric="val_mae",
        best_mode="min",
        keep_best=1,
        async_save=config.train.async_checkpoint and not read_only,
        read_only=read_only,
    )


def abstract_target(config, mesh):
    model = model_lib.make_forecaster(config)
    tx = optim.make_optimizer(config.forecaster.optim, config.forecaster.num_steps)
    init_fn = functools.partial(init_state, config=config, model=model, tx=tx)
    target, shardings = state_lib.abstract_state(
        init_fn, jax.random.key(config.seed), mesh, config.fsdp_min_size
    )
    return model, tx, init_fn, target, shardings


@dataclasses.dataclass(frozen=True)
class Parts:
    """Everything the forecaster loops share, built (and jitted) once for all three runs."""

    init: Any  # () -> sharded initial TrainState (the same for every forecaster)
    target: Any  # abstract state with shardings, for restores
    step_fn: Any
    predict_fn: Any


def make_parts(config: ml_collections.ConfigDict, mesh) -> Parts:
    model, tx, init_fn, target, shardings = abstract_target(config, mesh)
    rng = jax.random.key(config.seed)
    init = jax.jit(init_fn, out_shardings=shardings)
    return Parts(
        init=lambda: init(rng),
        target=target,
        step_fn=make_train_step(model, tx, shardings, mesh),
        predict_fn=make_predict(model, mesh),
    )


def train_forecaster(
    config: ml_collections.ConfigDict,
    workdir: str,
    train_source,
    val_source,
    mesh,
    preemption: loop.Preemption,
    parts: Parts,
) -> bool:
    """Trains to `config.forecaster.num_steps` (resuming); returns False when preempted."""
    fc = config.forecaster
    writer = MetricWriter(workdir)
    train_iter = pipeline.train_iterator(
        train_source, global_batch_size=fc.global_batch_size, seed=config.seed
    )
    manager = make_manager(workdir, config)
    state = checkpoint.restore_or_init(manager, parts.target, parts.init, train_iter)
    step_fn, predict_fn = parts.step_fn, parts.predict_fn
    start_step = int(state.step)
    progress = loop.Progress(fc.num_steps, fc.global_batch_size, start_step)
    throttle = loop.StepThrottle(config.train.max_in_flight)
    preempted = False
    for step in range(start_step + 1, fc.num_steps + 1):
        batch = mesh_lib.global_batch(next(train_iter), mesh)
        state, metrics = step_fn(state, batch)
        throttle(metrics)
        preempted = preemption.requested(step)
        last = step == fc.num_steps
        save = loop.every(step, fc.eval_every) or last or preempted
        if loop.every(step, config.train.log_every) or save:
            metrics = jax.device_get(metrics)
            loop.check_finite(step, metrics)
            writer.write_scalars(step, {**metrics, **progress.report(step, metrics)})
        eval_metrics = None
        if loop.every(step, fc.eval_every) or last:
            eval_metrics = val_metrics(
                predict_fn, state.params, val_source, mesh, config.eval.global_batch_size
            )
            writer.write_scalars(step, eval_metrics)
        if save:
            checkpoint.save(manager, step, state, train_iter, metrics=eval_metrics)
        if preempted:
            logging.warning("Preempted: checkpointed forecaster step %d in %s.", step, workdir)
            break
    checkpoint.wait(manager)
    manager.close()
    writer.close()
    return not preempted


def restore_params(config, workdir: str, target) -> tuple[Any, int]:
    """The forecaster parameters of `workdir`'s best (validation MAE) checkpoint and its step;
    target: the abstract state (`Parts.target`)."""
    manager = make_manager(workdir, config, read_only=True)
    step = checkpoint.select_step(manager, config.eval.forecaster_checkpoint, "val_mae", "min")
    state = checkpoint.restore(manager, target, step=step)
    manager.close()
    return state.params, step
