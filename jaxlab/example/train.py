"""Training loop of the example task, in the stages every task's train.py follows."""

from __future__ import annotations

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
from jaxlab.example import data
from jaxlab.example import model as model_lib
from jaxlab.example.evaluate import make_eval_step, predict_split
from jaxlab.example.model import MLP


def train_step(
    state: state_lib.TrainState, batch: dict[str, jax.Array], *, model: MLP, tx: Any
) -> tuple[state_lib.TrainState, dict[str, jax.Array]]:
    """One optimizer step on the mean squared error. batch: x [B, F], y [B], index [B]."""

    def loss_fn(params):
        pred = model.apply({"params": params}, batch["x"])
        return jnp.mean(jnp.square(pred - batch["y"]))

    loss, grads = jax.value_and_grad(loss_fn)(state.params)
    updates, opt_state = tx.update(grads, state.opt_state, state.params, value=loss)
    params = optax.apply_updates(state.params, updates)
    metrics = {
        "loss": loss,
        "grad_norm": optax.tree.norm(grads),
        # The sum of record ids: tests compare it step by step to prove the data order resumes.
        "data_checksum": jnp.sum(batch["index"]),
    }
    return state.replace(step=state.step + 1, params=params, opt_state=opt_state), metrics


def make_train_step(model: MLP, tx: Any, shardings: Any, mesh: jax.sharding.Mesh):
    """`train_step` jitted once with explicit shardings; the input state's buffers are donated."""
    return jax.jit(
        functools.partial(train_step, model=model, tx=tx),
        in_shardings=(shardings, mesh_lib.data_sharding(mesh)),
        out_shardings=(shardings, mesh_lib.replicated(mesh)),
        donate_argnums=0,
    )


def benchmark_setup(config: ml_collections.ConfigDict, mesh: jax.sharding.Mesh):
    """(jitted step, initial state, one global batch) for scripts/benchmark.py; no files."""
    tc = config.train
    num_features = config.data.num_features
    model = model_lib.make_model(config)
    tx = optim.make_optimizer(config.optim, tc.num_steps)
    init_fn = functools.partial(model_lib.init_state, model=model, tx=tx, num_features=num_features)
    state, shardings = state_lib.init_sharded(init_fn, jax.random.key(config.seed), mesh)
    rng = np.random.default_rng(config.seed)
    batch = {
        "x": rng.normal(size=(tc.global_batch_size, num_features)).astype(np.float32),
        "y": rng.normal(size=(tc.global_batch_size,)).astype(np.float32),
        "index": np.arange(tc.global_batch_size, dtype=np.int32),
    }
    return make_train_step(model, tx, shardings, mesh), state, mesh_lib.global_batch(batch, mesh)


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, float]:
    """Trains to `config.train.num_steps`, resuming from `workdir`; returns last eval metrics."""
    tc = config.train
    writer = MetricWriter(workdir)
    writer.write_hparams(config.to_dict())

    # Mesh.
    mesh = mesh_lib.make_mesh(config.mesh)
    mesh_lib.log_topology(mesh)

    # Input.
    data_dir = data.prepare(config, workdir)
    train_source = data.load(data_dir, "train")
    eval_source = data.load(data_dir, config.eval.split)
    train_iter = pipeline.train_iterator(
        train_source, global_batch_size=tc.global_batch_size, seed=config.seed
    )

    # Model, optimizer and state (restored when the workdir has a checkpoint).
    model = model_lib.make_model(config)
    tx = optim.make_optimizer(config.optim, tc.num_steps)
    init_fn = functools.partial(
        model_lib.init_state, model=model, tx=tx, num_features=train_source.num_features
    )
    rng = jax.random.key(config.seed)
    target, shardings = state_lib.abstract_state(init_fn, rng, mesh, config.fsdp_min_size)
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

    # Step.
    step_fn = make_train_step(model, tx, shardings, mesh)
    eval_step_fn = make_eval_step(model, mesh)
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
                eval_metrics, _ = predict_split(
                    eval_step_fn, state.params, eval_source, mesh, config.eval.global_batch_size
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
