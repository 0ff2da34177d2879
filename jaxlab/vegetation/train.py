"""Training loop of the vegetation task: epochs over the training cubes, plateau LR, early stop.

Stages, top to bottom: writer, mesh, input (synthetic cubes written first when configured;
normalisation from the training track, saved in the workdir), parts (`steps.build`), state
(restored or new), loop. Every `eval_every_epochs` epochs the loop computes the validation loss,
logs the NDVI forecast of the first validation cube against its target on a few target dates
(a TensorBoard image, `eval/ndvi_forecast`), updates the early-stopping state and checkpoints;
the early-stopping state is saved inside that checkpoint (`loop_state`), so a resumed run stops
at exactly the evaluation an uninterrupted one would. SIGTERM checkpoints and exits.

Shuffling: grain shuffles the whole training index afresh each epoch (a shuffle buffer as large
as the dataset), seeded, so a resumed run draws the same batches.
"""

from __future__ import annotations

from typing import Any

import ml_collections
import numpy as np
from absl import logging

from jaxlab.core import checkpoint, early_stopping, loop, restore, rng, steps_jit, trainer
from jaxlab.core import mesh as mesh_lib
from jaxlab.core import workdir as workdir_lib
from jaxlab.core.writer import MetricWriter, figure_to_image
from jaxlab.data import pipeline
from jaxlab.vegetation import data, evaluate, plots, steps

NUM_STRIP_DATES = 4  # target dates in the validation figure


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


def write_forecast_image(
    writer: MetricWriter, step: int, parts, params, val_source, mesh, batch_size: int
) -> None:
    """The NDVI forecast of validation record 0 against its target, as `eval/ndvi_forecast`.

    One extra `eval_step` batch (record 0 and its padding copies) on every process, as the step
    is collective; the figure is drawn on the writing process only.
    """
    record = val_source[0]
    _, pred = steps_jit.eval_pass(parts.eval_step, params, [record], mesh, batch_size)
    if not writer.enabled:
        return
    norm, d = val_source.norm, val_source.config.data
    picks = np.linspace(0, d.num_target - 1, NUM_STRIP_DATES).round().astype(int)
    bap = record["bap"][None]  # [1, H, W, 4] normalised; deltas are relative to it
    pred_ndvi = evaluate.ndvi(norm.unbands(bap + pred[0][picks]))
    true_ndvi = evaluate.ndvi(norm.unbands(bap + record["target_delta"][picks]))
    true_ndvi = np.where(record["target_mask"][picks] > 0, true_ndvi, np.nan)
    lead = val_source.frame_days[d.num_context + picks] - val_source.frame_days[d.num_context - 1]
    name = "/".join(data.region_and_name(val_source.items[0][0]))
    fig = plots.ndvi_strip(true_ndvi, pred_ndvi, lead, f"step {step}: {name}")
    writer.write_images(step, {"eval/ndvi_forecast": figure_to_image(fig)})


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, float]:
    """Trains (resuming from workdir) until num_epochs or early stopping; returns val metrics."""
    t = config.train
    writer = workdir_lib.open_workdir(config, workdir)

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
    state, loop_state = restore.init_or_restore(
        manager, parts, rng.stream(config.seed, "init"), train_iter
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
    with trainer.loop_helpers(
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
                    "epoch": step / parts.steps_per_epoch,
                }
                trainer.log_train_step(h, step, metrics, extra)
            if evaluate_now:
                val_metrics = evaluate.validation_metrics(
                    parts.eval_step, state.params, val_source, mesh, config.eval.global_batch_size
                )
                writer.write_scalars(step, val_metrics)
                eval_batch = config.eval.global_batch_size
                write_forecast_image(
                    writer, step, parts, state.params, val_source, mesh, eval_batch
                )
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
