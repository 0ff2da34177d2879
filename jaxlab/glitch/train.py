"""Training loop of the glitch classifier: epochs, per-epoch validation, early stopping.

Stages, top to bottom: writer, mesh, input, parts (`steps.build`), state (restored, or new and
optionally with timm encoder weights), loop. Once per epoch the loop logs train and validation
loss, accuracy, balanced accuracy and F1 (macro, weighted) and the validation confusion matrix
(a TensorBoard image, `eval/confusion_matrix`), saves a checkpoint carrying
`val_accuracy` (the manager keeps the best by it and the latest ones) and stops after
`train.patience` epochs without a better validation accuracy. A SIGTERM checkpoints the current
step and exits; rerunning resumes.

What the loop carries between steps besides the `TrainState` (the early-stopping state, the
current epoch's train-metric accumulators and the last validation record) is the checkpoint's
loop state, committed with it. A resumed run therefore stops at the same epoch and logs the same
epoch metrics as an uninterrupted one.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging

from jaxlab.core import checkpoint, early_stopping, loop, restore, rng, trainer
from jaxlab.core import mesh as mesh_lib
from jaxlab.core import workdir as workdir_lib
from jaxlab.core.writer import figure_to_image
from jaxlab.data import pipeline
from jaxlab.glitch import data, evaluate, metrics, plots, steps


def fresh_loop_state() -> dict[str, Any]:
    """Loop state of a run at step 0: no evaluation seen, empty epoch accumulators."""
    return {
        "early_stopping": early_stopping.init(),
        "epoch_loss": 0.0,  # sum of the current epoch's step losses
        "epoch_steps": 0,
        "epoch_confusion": None,  # [C, C] of the current epoch's steps; None at an epoch end
        "val_record": {},  # the last validation's metrics
    }


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, float]:
    """Trains for `train.num_epochs` (or until early stopping), resuming from `workdir`.

    Returns the last epoch's validation metrics plus best_val_accuracy and stopped_epoch.
    """
    tc = config.train
    writer = workdir_lib.open_workdir(config, workdir)

    # Mesh.
    mesh = mesh_lib.make_mesh(config.mesh)
    mesh_lib.log_topology(mesh)

    # Input.
    data_dir = data.prepare(config, workdir)
    train_source = data.load(config, data_dir, "train")
    val_source = data.load(config, data_dir, "validation")
    num_classes = len(train_source.classes)
    logging.info(
        "%d classes; %d train / %d validation samples",
        num_classes,
        len(train_source),
        len(val_source),
    )
    max_shift = config.data.augment_max_shift
    train_iter = pipeline.train_iterator(
        train_source,
        global_batch_size=tc.global_batch_size,
        seed=config.seed,
        random_transform=data.shift_augment(max_shift) if max_shift else None,
        num_threads=config.data.num_threads,
    )
    class_weights = None
    if config.data.use_class_weights:
        class_weights = data.class_weights(train_source.labels, num_classes)
        logging.info("Class weights: %s", np.round(class_weights, 3).tolist())

    # Parts and state (restored when the workdir has a checkpoint; a new run may start from timm
    # encoder weights).
    parts = steps.build(
        config,
        mesh,
        num_train=len(train_source),
        num_classes=num_classes,
        class_weights=class_weights,
    )
    manager = checkpoint.manager_from_config(config, workdir)
    new_run = manager.latest_step() is None
    state, resumed = restore.init_or_restore(
        manager, parts, rng.stream(config.seed, "init"), train_iter
    )
    if new_run and config.model.pretrained:
        state = steps.with_pretrained_encoder(config, parts, state)
        logging.info("Encoder initialised from %s", config.model.pretrained)
    start_step = int(state.step)
    if resumed is None:
        if not new_run:
            logging.warning(
                "Checkpoint step %d holds no loop state (an older run): early stopping and the "
                "epoch's train metrics start afresh.",
                start_step,
            )
        resumed = fresh_loop_state()

    # Early stopping and the epoch's train-metric accumulators (on device), as last saved.
    stopping = resumed["early_stopping"]
    val_record: dict[str, float] = resumed["val_record"]
    epoch_confusion = jnp.zeros((num_classes, num_classes), jnp.int32)
    if resumed["epoch_confusion"] is not None:
        epoch_confusion = jnp.asarray(resumed["epoch_confusion"], jnp.int32)
    epoch_loss = jnp.asarray(resumed["epoch_loss"], jnp.float32)
    epoch_steps = resumed["epoch_steps"]

    def loop_state(partial_epoch: bool) -> dict[str, Any]:
        """What the loop needs besides the TrainState to go on exactly (host values)."""
        return {
            "early_stopping": stopping,
            "epoch_loss": float(jax.device_get(epoch_loss)),
            "epoch_steps": epoch_steps,
            "epoch_confusion": jax.device_get(epoch_confusion).tolist() if partial_epoch else None,
            "val_record": val_record,
        }

    # Loop.
    epoch = start_step // parts.steps_per_epoch
    first_step = start_step + 1
    if early_stopping.should_stop(stopping):
        logging.info("Early stopped at epoch %d (best %s).", epoch, stopping)
        first_step = parts.num_steps + 1
    with trainer.loop_helpers(
        config, workdir, manager, writer, start_step, parts.num_steps, tc.global_batch_size
    ) as h:
        for step in range(first_step, parts.num_steps + 1):
            h.profile.step(step, state)
            batch = mesh_lib.global_batch(next(train_iter), mesh)
            state, step_metrics = parts.train_step(state, batch)
            h.throttle(step_metrics["loss"])
            epoch_confusion = epoch_confusion + step_metrics.pop("confusion")  # on device
            epoch_loss, epoch_steps = epoch_loss + step_metrics["loss"], epoch_steps + 1

            preempted = h.preemption.requested(step)
            # A train.num_steps that ends mid-epoch closes its last, partial epoch too.
            end_of_epoch = step % parts.steps_per_epoch == 0 or step == parts.num_steps
            if loop.every(step, tc.log_every) or end_of_epoch or preempted:
                trainer.log_train_step(h, step, step_metrics)

            if end_of_epoch:
                epoch = -(-step // parts.steps_per_epoch)
                train_record = metrics.epoch_record(
                    "train", jax.device_get(epoch_confusion), float(epoch_loss) / epoch_steps
                )
                val = evaluate.predict_split(
                    parts.eval_step, state.params, val_source, mesh, config.eval.global_batch_size
                )
                val_record = metrics.epoch_record("val", val["confusion"], val["loss"])
                writer.write_scalars(step, {"epoch": epoch, **train_record, **val_record})
                if writer.enabled:
                    title = f"validation, epoch {epoch}: accuracy {val_record['val_accuracy']:.3f}"
                    fig = plots.confusion_matrix_figure(
                        val["confusion"], train_source.classes, title, figsize=(6, 4), dpi=100
                    )
                    writer.write_images(step, {"eval/confusion_matrix": figure_to_image(fig)})
                epoch_confusion = jnp.zeros_like(epoch_confusion)
                epoch_loss, epoch_steps = jnp.zeros((), jnp.float32), 0
                stopping = early_stopping.update(
                    stopping, val_record["val_accuracy"], epoch, patience=tc.patience, mode="max"
                )
                checkpoint.save(
                    manager,
                    step,
                    state,
                    train_iter,
                    metrics={"val_accuracy": val_record["val_accuracy"]},
                    loop_state=loop_state(partial_epoch=False),
                )
                if early_stopping.should_stop(stopping):
                    logging.info(
                        "Early stopping at epoch %d: val_accuracy has not improved on %.4f "
                        "(epoch %d) for %d epochs.",
                        epoch,
                        stopping["best"],
                        stopping["best_at"],
                        tc.patience,
                    )
                    break
            elif preempted:
                checkpoint.save(
                    manager, step, state, train_iter, loop_state=loop_state(partial_epoch=True)
                )
            if preempted:
                loop.log_preempted(step)
                break
    return {**val_record, "best_val_accuracy": stopping["best"], "stopped_epoch": epoch}
