"""Evaluation of the example task: MSE against the predict-the-mean baseline, from a checkpoint."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from typing import Any

import jax
import ml_collections
import numpy as np

from jaxlab.core import mesh as mesh_lib
from jaxlab.core import restore, steps_jit
from jaxlab.example import data, plots, steps


def evaluate_split(
    eval_step: Callable, params: Any, source: Any, mesh: Any, batch_size: int
) -> tuple[dict[str, float], np.ndarray]:
    """One ordered pass with `Parts.eval_step`: ({"eval_mse"}, predictions [N])."""
    totals, predictions = steps_jit.eval_pass(eval_step, params, source, mesh, batch_size)
    return {"eval_mse": float(totals["sq_err"] / totals["count"])}, predictions


def evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, float]:
    """Restores `config.eval.checkpoint` from workdir; writes metrics.json and a PNG there."""
    mesh = mesh_lib.make_mesh(config.mesh)
    data_dir = data.prepare(config, workdir)
    source = data.load(data_dir, config.eval.split, config.data.num_features)
    train_source = data.load(data_dir, "train", config.data.num_features)
    parts = steps.build(config, mesh)
    state, step = restore.restore_for_eval(config, workdir, parts)

    metrics, predictions = evaluate_split(
        parts.eval_step, state.params, source, mesh, config.eval.global_batch_size
    )
    metrics["baseline_mse"] = float(np.mean(np.square(source.y - train_source.y.mean())))
    metrics["checkpoint_step"] = step

    out_dir = os.path.join(workdir, "eval", config.eval.split)
    os.makedirs(out_dir, exist_ok=True)
    if jax.process_index() == 0:
        with open(os.path.join(out_dir, "metrics.json"), "w") as f:
            json.dump(metrics, f, indent=2)
        fig = plots.prediction_scatter(source.y, predictions, "example: eval predictions")
        fig.savefig(os.path.join(out_dir, "predictions.png"))
        plots.close(fig)
    return metrics
