"""Training of the vegetation task (epochs, plateau LR, early stopping): what it gives
`core/trainer.py`, which owns the loop.

`sources` writes synthetic cubes first when configured, fits the normalisation on the training
track (saved in the workdir) and reads the windows from the record cache (cache.py, built on
first use); `build` sizes the schedule in epochs of the training windows. Every
`train.eval_every_epochs` epochs the trainer computes the validation loss
(`evaluate_during_training`), logs the NDVI forecast of the first validation cube against its
target on a few target dates (`figure`, `eval/ndvi_forecast`), updates early stopping on
`eval.best_metric` (val_loss, with `eval.early_stopping_min_delta`) and checkpoints.

Shuffling: grain shuffles the whole training index afresh each epoch (a shuffle buffer as large
as the dataset), seeded, so a resumed run draws the same batches.
"""

from __future__ import annotations

import sys
from typing import Any

import jax
import ml_collections
import numpy as np
from absl import logging

from jaxlab.core import steps_jit, trainer
from jaxlab.core.writer import figure_to_image
from jaxlab.data import pipeline
from jaxlab.vegetation import cache, data, evaluate, plots, steps

NUM_STRIP_DATES = 4  # target dates in the validation figure


def forecast_image(
    step: int, parts, params, val_source, mesh, batch_size: int
) -> dict[str, np.ndarray]:
    """{"eval/ndvi_forecast"}: the NDVI forecast of validation record 0 against its target.

    One extra `eval_step` batch (record 0 and its padding copies) on every process, as the step
    is collective; the figure is drawn on process 0 only.
    """
    record = val_source[0]
    _, pred = steps_jit.eval_pass(parts.eval_step, params, [record], mesh, batch_size)
    if jax.process_index() != 0:
        return {}
    norm, d = val_source.norm, val_source.config.data
    picks = np.linspace(0, d.num_target - 1, NUM_STRIP_DATES).round().astype(int)
    bap = record["bap"][None]  # [1, H, W, 4] normalised; deltas are relative to it
    pred_ndvi = evaluate.ndvi(norm.unbands(bap + pred[0][picks]))
    true_ndvi = evaluate.ndvi(norm.unbands(bap + record["target_delta"][picks]))
    true_ndvi = np.where(record["target_mask"][picks] > 0, true_ndvi, np.nan)
    lead = val_source.frame_days[d.num_context + picks] - val_source.frame_days[d.num_context - 1]
    name = "/".join(data.region_and_name(val_source.items[0][0]))
    fig = plots.ndvi_strip(true_ndvi, pred_ndvi, lead, f"step {step}: {name}")
    return {"eval/ndvi_forecast": figure_to_image(fig)}


def sources(config: ml_collections.ConfigDict, workdir: str) -> trainer.Input:
    """Training windows (shuffled afresh each epoch) and validation cubes, normalised; read from
    the model-ready cache (built on first use, see cache.py) unless data.cache = "off"."""
    root = data.prepare(config, workdir)
    norm = data.normalisation(config, workdir, root)
    train_source = cache.load(config, workdir, root, config.data.train_track, norm)
    val_source = cache.load(config, workdir, root, config.data.val_track, norm)
    train_iter = pipeline.train_iterator(
        train_source,
        global_batch_size=config.train.global_batch_size,
        seed=config.seed,
        workers=pipeline.resolve_workers(config),
    )
    logging.info("%d training windows, %d validation cubes", len(train_source), len(val_source))
    return trainer.Input(
        train_iter=train_iter,
        eval_source=val_source,
        build_kwargs={"num_train_records": len(train_source)},
    )


def build(config: ml_collections.ConfigDict, mesh, **build_kwargs):
    """The task's parts: `steps.build` with what `sources` read from the data."""
    return steps.build(config, mesh, **build_kwargs)


def evaluate_during_training(config, parts, state, inputs: trainer.Input, mesh, train_window):
    """(validation loss and clear-pixel RMSEs, no outputs)."""
    del train_window  # no train-metric sums
    metrics = evaluate.validation_metrics(
        parts.eval_step, state.params, inputs.eval_source, mesh, config.eval.global_batch_size
    )
    return metrics, None


def figure(config, parts, state, inputs: trainer.Input, mesh, step: int, metrics, outputs):
    """{"eval/ndvi_forecast"}: see `forecast_image`."""
    del metrics, outputs
    return forecast_image(
        step, parts, state.params, inputs.eval_source, mesh, config.eval.global_batch_size
    )


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
    """Trains (resuming from workdir) until num_epochs or early stopping; returns val metrics."""
    return trainer.run(config, workdir, sys.modules[__name__])
