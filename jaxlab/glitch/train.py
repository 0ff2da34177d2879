"""Training of the glitch classifier (epochs, per-epoch validation, early stopping): what it
gives `core/trainer.py`, which owns the loop.

`sources` reads the train and validation splits (with shift augmentation and class weights when
configured); `build` sizes the schedule in epochs; `init_fn` starts a new run from timm encoder
weights when `model.pretrained` names them. Once per epoch (`train.eval_every_epochs` = 1) the
trainer calls `evaluate_during_training`, which returns the epoch's train and validation loss,
accuracy, balanced accuracy and F1 (macro, weighted): the train ones from the epoch's step
losses and confusion matrix, summed on device by the trainer (`Input.window_keys`) and kept in
the checkpoint's loop state, so a resumed run logs the same epoch metrics as an uninterrupted
one. `figure` draws the validation confusion matrix (`eval/confusion_matrix`). The trainer keeps
the best checkpoint by `eval.best_metric` (val_accuracy) and stops after
`eval.early_stopping_patience` epochs without a better one.
"""

from __future__ import annotations

import sys
from typing import Any

import ml_collections
import numpy as np
from absl import logging

from jaxlab.core import parts as parts_lib
from jaxlab.core import trainer
from jaxlab.core.writer import figure_to_image
from jaxlab.data import pipeline
from jaxlab.glitch import data, evaluate, metrics, plots, steps


def build(config: ml_collections.ConfigDict, mesh, **build_kwargs):
    """The task's parts: `steps.build` with what `sources` read from the data."""
    return steps.build(config, mesh, **build_kwargs)


def sources(config: ml_collections.ConfigDict, workdir: str) -> trainer.Input:
    """Training batches (shift-augmented when configured) and the validation split."""
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
        global_batch_size=config.train.global_batch_size,
        seed=config.seed,
        random_transform=data.shift_augment(max_shift) if max_shift else None,
        num_threads=config.data.num_threads,
        workers=pipeline.resolve_workers(config),
    )
    class_weights = None
    if config.data.use_class_weights:
        class_weights = data.class_weights(train_source.labels, num_classes)
        logging.info("Class weights: %s", np.round(class_weights, 3).tolist())
    return trainer.Input(
        train_iter=train_iter,
        eval_source=val_source,
        build_kwargs={
            "num_train": len(train_source),
            "num_classes": num_classes,
            "class_weights": class_weights,
        },
        info={"classes": train_source.classes},
        window_keys=("loss", "confusion"),
    )


def init_fn(config: ml_collections.ConfigDict, parts: parts_lib.Parts):
    """A new run's state with the timm encoder weights of `model.pretrained`; None without."""
    if not config.model.pretrained:
        return None

    def init(rng):
        state = parts_lib.init_state(parts, rng)
        logging.info("Encoder initialised from %s", config.model.pretrained)
        return steps.with_pretrained_encoder(config, parts, state)

    return init


def evaluate_during_training(config, parts, state, inputs: trainer.Input, mesh, train_window):
    """(the epoch's train and validation records, the validation pass) at an epoch's end."""
    val = evaluate.predict_split(
        parts.eval_step, state.params, inputs.eval_source, mesh, config.eval.global_batch_size
    )
    train_loss = float(train_window["loss"]) / max(train_window["steps"], 1)
    record = {
        **metrics.epoch_record("train", train_window["confusion"], train_loss),
        **metrics.epoch_record("val", val["confusion"], val["loss"]),
    }
    return record, val


def figure(config, parts, state, inputs: trainer.Input, mesh, step, record, val):
    """{"eval/confusion_matrix"}: the validation confusion matrix."""
    del config, state, mesh
    epoch = -(-step // parts.steps_per_epoch)
    title = f"validation, epoch {epoch}: accuracy {record['val_accuracy']:.3f}"
    fig = plots.confusion_matrix_figure(
        val["confusion"], inputs.info["classes"], title, figsize=(6, 4), dpi=100
    )
    return {"eval/confusion_matrix": figure_to_image(fig)}


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
    """Trains for `train.num_epochs` (or until early stopping), resuming from `workdir`.

    Returns the last epoch's validation metrics plus best_val_accuracy and stopped_epoch (the
    epoch the run ended at).
    """
    result = trainer.run(config, workdir, sys.modules[__name__])
    return {
        **{k: v for k, v in result.items() if k.startswith("val_")},
        "best_val_accuracy": result["best"],
        "stopped_epoch": result["epoch"],
    }
