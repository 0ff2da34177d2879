"""Evaluation of the example task: MSE against the predict-the-mean baseline, from a checkpoint."""

from __future__ import annotations

import functools
import json
import os
from typing import Any

import jax
import jax.numpy as jnp
import matplotlib
import ml_collections
import numpy as np

from jaxlab.core import checkpoint, loop, optim
from jaxlab.core import mesh as mesh_lib
from jaxlab.core import state as state_lib
from jaxlab.data import pipeline
from jaxlab.example import data
from jaxlab.example import model as model_lib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def eval_step(params: Any, batch: dict[str, jax.Array], valid: jax.Array, *, model: Any):
    """Sums over valid rows: squared error, count. Also returns predictions [B] for plots."""
    pred = model.apply({"params": params}, batch["x"])
    weight = valid.astype(jnp.float32)
    sums = {"sq_err": jnp.sum(weight * jnp.square(pred - batch["y"])), "count": jnp.sum(weight)}
    return sums, pred


def make_eval_step(model: Any, mesh: Any):
    """`eval_step` jitted once for this mesh: (params, batch, valid) -> (sums, predictions)."""
    return jax.jit(
        functools.partial(eval_step, model=model),
        in_shardings=(mesh_lib.replicated(mesh), mesh_lib.data_sharding(mesh), None),
        out_shardings=(mesh_lib.replicated(mesh), mesh_lib.replicated(mesh)),
    )


def predict_split(step, params, source, mesh, batch_size) -> tuple[dict[str, float], np.ndarray]:
    """One ordered pass with a `make_eval_step` function: ({"eval_mse"}, predictions [N])."""
    totals, preds = None, []
    throttle = loop.StepThrottle()
    for local_batch, valid in pipeline.eval_batches(source, global_batch_size=batch_size):
        batch = mesh_lib.global_batch(local_batch, mesh)
        sums, pred = step(params, batch, mesh_lib.global_batch(valid, mesh))
        throttle(pred)
        totals = sums if totals is None else jax.tree.map(jnp.add, totals, sums)
        preds.append(pred)
    totals = jax.device_get(totals)
    predictions = np.concatenate(jax.device_get(preds))[: len(source)]
    return {"eval_mse": float(totals["sq_err"] / totals["count"])}, predictions


def evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, float]:
    """Restores `config.eval.checkpoint` from workdir; writes metrics.json and a PNG there."""
    mesh = mesh_lib.make_mesh(config.mesh)
    data_dir = data.prepare(config, workdir)
    source = data.load(data_dir, config.eval.split)
    train_source = data.load(data_dir, "train")
    model = model_lib.make_model(config)
    tx = optim.make_optimizer(config.optim, config.train.num_steps)
    init_fn = functools.partial(
        model_lib.init_state, model=model, tx=tx, num_features=source.num_features
    )
    target, _ = state_lib.abstract_state(
        init_fn, jax.random.key(config.seed), mesh, config.fsdp_min_size
    )
    manager = checkpoint.make_manager(os.path.join(workdir, "checkpoints"), read_only=True)
    step = checkpoint.select_step(
        manager, config.eval.checkpoint, config.eval.best_metric, config.eval.best_mode
    )
    state = checkpoint.restore(manager, target, step=step)

    eval_step_fn = make_eval_step(model, mesh)
    metrics, predictions = predict_split(
        eval_step_fn, state.params, source, mesh, config.eval.global_batch_size
    )
    metrics["baseline_mse"] = float(np.mean(np.square(source.y - train_source.y.mean())))
    metrics["checkpoint_step"] = step

    out_dir = os.path.join(workdir, "eval", config.eval.split)
    os.makedirs(out_dir, exist_ok=True)
    if jax.process_index() == 0:
        with open(os.path.join(out_dir, "metrics.json"), "w") as f:
            json.dump(metrics, f, indent=2)
        plot_predictions(source.y, predictions, os.path.join(out_dir, "predictions.png"))
    return metrics


def plot_predictions(target: np.ndarray, prediction: np.ndarray, path: str) -> None:
    fig, ax = plt.subplots(figsize=(4, 4))
    ax.scatter(target, prediction, s=4, alpha=0.5)
    lo, hi = float(target.min()), float(target.max())
    ax.plot([lo, hi], [lo, hi], "k--", lw=1)
    ax.set(xlabel="target", ylabel="prediction", title="example: eval predictions")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
