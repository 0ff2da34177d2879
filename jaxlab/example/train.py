"""Training of the example task: the reference for what a task gives `core/trainer.py`.

`trainer.run` owns the loop (workdir, mesh, input, parts, state, loop); this module only says
what is specific to the task: where the data comes from (`sources`), how to build the parts
(`build`, from steps.py), the evaluation run inside the loop (`evaluate_during_training`: the
eval split's MSE) and its figure (`figure`: the prediction-vs-target scatter, under
`eval/predictions`).
"""

from __future__ import annotations

import sys
from typing import Any

import ml_collections

from jaxlab.core import trainer
from jaxlab.core.writer import figure_to_image
from jaxlab.data import pipeline
from jaxlab.example import data, evaluate, plots, steps


def build(config: ml_collections.ConfigDict, mesh, **build_kwargs):
    """The task's parts: `steps.build` with what `sources` read from the data."""
    return steps.build(config, mesh, **build_kwargs)


def sources(config: ml_collections.ConfigDict, workdir: str) -> trainer.Input:
    """The training iterator over the train split and the eval split (written first when
    `data.synthetic` and missing)."""
    data_dir = data.prepare(config, workdir)
    train_source = data.load(data_dir, "train", config.data.num_features)
    eval_source = data.load(data_dir, config.eval.split, config.data.num_features)
    train_iter = pipeline.train_iterator(
        train_source,
        global_batch_size=config.train.global_batch_size,
        seed=config.seed,
        workers=pipeline.resolve_workers(config),
    )
    return trainer.Input(train_iter=train_iter, eval_source=eval_source)


def evaluate_during_training(config, parts, state, inputs: trainer.Input, mesh, train_window):
    """(eval metrics, predictions [N]) of the current parameters on the eval split."""
    del train_window  # no train-metric sums
    return evaluate.evaluate_split(
        parts.eval_step, state.params, inputs.eval_source, mesh, config.eval.global_batch_size
    )


def figure(config, parts, state, inputs: trainer.Input, mesh, step: int, metrics, predictions):
    """{"eval/predictions": the eval split's prediction-vs-target scatter}."""
    del config, parts, state, mesh
    title = f"step {step}: eval MSE {metrics['eval_mse']:.4f}"
    fig = plots.prediction_scatter(inputs.eval_source.y, predictions, title)
    return {"eval/predictions": figure_to_image(fig)}


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
    """Trains to `config.train.num_steps`, resuming from `workdir`; returns last eval metrics."""
    return trainer.run(config, workdir, sys.modules[__name__])
