"""Training loop of the vegetation task: epochs over the training cubes, plateau LR, early stop.

Stages, top to bottom: writer, mesh, input (synthetic cubes written first when configured;
normalisation from the training track, saved in the workdir), parts (`steps.build`), state
(restored or new), loop. Every `eval_every_epochs` epochs the loop computes the validation loss,
updates the early-stopping state and checkpoints; the early-stopping state is saved inside that
checkpoint (`loop_state`), so a resumed run stops at exactly the evaluation an uninterrupted one
would. SIGTERM checkpoints and exits.

Shuffling: grain shuffles the whole training index afresh each epoch (a shuffle buffer as large
as the dataset), seeded, so a resumed run draws the same batches.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import ml_collections
from absl import logging

from jaxlab.core import checkpoint, early_stopping, loop, optim, rng, run
from jaxlab.core import mesh as mesh_lib
from jaxlab.data import pipeline
from jaxlab.vegetation import data, evaluate, steps


def restored_early_stopping(loop_state: dict[str, Any] | None, start_step: int) -> dict[str, Any]:
    """The early-stopping state saved with the restored checkpoint; fresh for a new run.

    A checkpoint without one (written before the state moved into the checkpoint) restarts the
    count, with a warning.
    """
    if loop_state is not None and "early_stopping" in loop_state:
        return dict(loop_state["early_stopping"])
    if start_step > 0:
        logging.warning(
            "The checkpoint of step %d has no early-stopping state; counting afresh.", start_step
        )
    return early_stopping.init()


def update_early_stopping(
    es: dict[str, Any], val_loss: float, step: int, train_config: ml_collections.ConfigDict
) -> dict[str, Any]:
    """`early_stopping.update` on the validation loss, with a minimum improvement.

    A loss that does not beat the best by more than `early_stopping_min_delta` is passed on as a
    tie with the best (a bad evaluation that keeps the best); core's update counts strict
    improvements only.
    """
    best = es["best"]
    if best is not None and not val_loss < best - train_config.early_stopping_min_delta:
        val_loss = best
    return early_stopping.update(
        es, val_loss, step, patience=train_config.early_stopping_patience, mode="min"
    )


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, float]:
    """Trains (resuming from workdir) until num_epochs or early stopping; returns val metrics."""
    t = config.train
    writer = run.open_workdir(config, workdir)

    # Mesh.
    mesh = mesh_lib.make_mesh(config.mesh)
    mesh_lib.log_topology(mesh)

    # Input.
    root = data.prepare(config, workdir)
    norm = data.normalisation(config, workdir, root)
    train_source = data.load(config, root, config.data.train_track, norm)
    val_source = data.load(config, root, config.data.val_track, norm)
    train_iter = pipeline.train_iterator(
        train_source, global_batch_size=t.global_batch_size, seed=config.seed
    )

    # Parts and state (restored when the workdir has a checkpoint).
    parts = steps.build(config, mesh, len(train_source))
    logging.info(
        "%d training windows, %d validation cubes; %d steps/epoch, %d steps",
        len(train_source),
        len(val_source),
        parts.steps_per_epoch,
        parts.num_steps,
    )
    manager = checkpoint.manager_from_config(config, workdir)
    state, loop_state = run.init_or_restore(
        manager, parts, rng.stream(config.seed, "init"), train_iter
    )
    lr_fn = jax.jit(
        functools.partial(optim.current_learning_rate, parts.optim_config, parts.num_steps)
    )

    # Loop.
    start_step = int(state.step)
    es = restored_early_stopping(loop_state, start_step)
    end_step = parts.num_steps
    if early_stopping.should_stop(es):
        logging.info("Early stopping already triggered at step %d.", es["stopped_at"])
        end_step = start_step
    eval_every = t.eval_every_epochs * parts.steps_per_epoch
    val_metrics: dict[str, float] = {}
    with run.loop_helpers(
        config, workdir, manager, writer, start_step, parts.num_steps, t.global_batch_size
    ) as h:
        for step in range(start_step + 1, end_step + 1):
            h.profile.step(step, state)
            batch = mesh_lib.global_batch(next(train_iter), mesh)
            state, metrics = parts.train_step(state, batch)
            h.throttle(metrics["loss"])

            preempted = h.preemption.requested(step)
            evaluate_now = loop.every(step, eval_every) or step == parts.num_steps
            if loop.every(step, t.log_every) or evaluate_now or preempted:
                extra = {
                    "lr": lr_fn(state.opt_state, state.step),
                    "epoch": step / parts.steps_per_epoch,
                }
                run.log_train_step(h, step, metrics, extra)
            if evaluate_now:
                val_metrics = evaluate.validation_metrics(
                    parts.eval_step, state.params, val_source, mesh, config.eval.global_batch_size
                )
                writer.write_scalars(step, val_metrics)
                es = update_early_stopping(es, val_metrics["val_loss"], step, t)
            if evaluate_now or preempted:
                checkpoint.save(
                    manager,
                    step,
                    state,
                    train_iter,
                    metrics=val_metrics if evaluate_now else None,
                    loop_state={"early_stopping": es},
                )
            if preempted:
                loop.log_preempted(step)
                break
            if early_stopping.should_stop(es):
                logging.info("Early stopping at step %d (best val_loss %.4g).", step, es["best"])
                break
    return val_metrics
