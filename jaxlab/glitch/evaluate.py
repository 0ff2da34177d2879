"""Evaluation of the glitch classifier from a checkpoint: metrics, report, figures, predictions.

Writes under `workdir/eval/<split>/`:
  metrics.json                accuracy, balanced_accuracy, f1_macro, f1_weighted, the
                              majority-class baseline, per-class precision/recall/f1/support and
                              the confusion matrix
  classification_report.txt   sklearn-style per-class table
  confusion_matrix.png        row-normalised, class names on both axes
  view_importance.png         mean fusion weight per view per true class (multi-view models)
  predictions.csv             gravityspy_id, label, predicted, top-3 classes and probabilities,
                              fusion weight of each view
"""

from __future__ import annotations

import csv
import functools
import json
import os
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from jaxlab.core import checkpoint, loop
from jaxlab.core import mesh as mesh_lib
from jaxlab.core import state as state_lib
from jaxlab.data import pipeline
from jaxlab.glitch import data, losses, metrics, plots


def eval_step(params: Any, batch: dict[str, jax.Array], valid: jax.Array, *, model, loss_config):
    """probs [B, C], view_weights [B, V], and the loss summed over valid rows."""
    out = model.apply({"params": params}, batch["image"], train=False)
    per_example = losses.per_example_loss(out["logits"], batch["label"], loss_config)
    return {
        "probs": jax.nn.softmax(out["logits"], axis=-1),
        "view_weights": out["view_weights"],
        "loss_sum": jnp.sum(per_example * valid.astype(jnp.float32)),
    }


def make_eval_step(model: Any, mesh: Any, loss_config: ml_collections.ConfigDict):
    """`eval_step` jitted once for this mesh: (params, batch, valid) -> outputs (replicated)."""
    return jax.jit(
        functools.partial(eval_step, model=model, loss_config=loss_config),
        in_shardings=(mesh_lib.replicated(mesh), mesh_lib.data_sharding(mesh), None),
        out_shardings=mesh_lib.replicated(mesh),
    )


def predict_split(step, params, source, mesh, batch_size: int) -> dict[str, Any]:
    """One ordered pass: probs [N, C], view_weights [N, V], confusion [C, C], mean loss."""
    probs, view_weights, loss_sum = [], [], 0.0
    throttle = loop.StepThrottle()
    for local_batch, valid in pipeline.eval_batches(source, global_batch_size=batch_size):
        batch = mesh_lib.global_batch(local_batch, mesh)
        out = step(params, batch, mesh_lib.global_batch(valid, mesh))
        throttle(out["probs"])
        probs.append(out["probs"])
        view_weights.append(out["view_weights"])
        loss_sum = loss_sum + out["loss_sum"]
    probs, view_weights, loss_sum = jax.device_get((probs, view_weights, loss_sum))
    n = len(source)
    probs = np.concatenate(probs)[:n]
    num_classes = probs.shape[1]
    confusion = metrics.confusion_matrix(source.labels, probs.argmax(-1), num_classes)
    return {
        "probs": probs,
        "view_weights": np.concatenate(view_weights)[:n],
        "confusion": confusion,
        "loss": float(loss_sum) / n,
    }


def evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
    """Restores `config.eval.checkpoint` and evaluates `config.eval.split`; writes the files."""
    from jaxlab.glitch import train  # train imports this module

    mesh = mesh_lib.make_mesh(config.mesh)
    data_dir = data.prepare(config, workdir)
    source = data.load(config, data_dir, config.eval.split)
    train_source = data.load(config, data_dir, "train")
    classes = train_source.classes
    if source.classes != classes:
        raise ValueError(
            f"split {config.eval.split!r} has classes {source.classes}, train has {classes}."
        )
    model, _, init_fn, _, _ = train.build(config, len(classes), len(train_source))
    target, _ = state_lib.abstract_state(
        init_fn, jax.random.key(config.seed), mesh, config.fsdp_min_size
    )
    manager = checkpoint.make_manager(os.path.join(workdir, "checkpoints"), read_only=True)
    step = checkpoint.select_step(
        manager, config.eval.checkpoint, config.eval.best_metric, config.eval.best_mode
    )
    state = checkpoint.restore(manager, target, step=step)

    result = predict_split(
        make_eval_step(model, mesh, config.loss),
        state.params,
        source,
        mesh,
        config.eval.global_batch_size,
    )
    confusion = result["confusion"]
    majority = int(np.bincount(train_source.labels, minlength=len(classes)).argmax())
    stats = metrics.per_class(confusion)
    out: dict[str, Any] = {
        **metrics.summary(confusion),
        "loss": result["loss"],
        "baseline_majority_accuracy": float(np.mean(source.labels == majority)),
        "num_examples": len(source),
        "checkpoint_step": step,
        "split": config.eval.split,
        "per_class": {
            name: {k: (int(v[c]) if k == "support" else float(v[c])) for k, v in stats.items()}
            for c, name in enumerate(classes)
        },
        "confusion_matrix": confusion.tolist(),
        "classes": list(classes),
    }

    out_dir = os.path.join(workdir, "eval", config.eval.split)
    if jax.process_index() == 0:
        os.makedirs(out_dir, exist_ok=True)
        with open(os.path.join(out_dir, "metrics.json"), "w") as f:
            json.dump(out, f, indent=2)
        with open(os.path.join(out_dir, "classification_report.txt"), "w") as f:
            f.write(metrics.classification_report(confusion, list(classes)))
        plots.confusion_matrix(
            confusion,
            classes,
            os.path.join(out_dir, "confusion_matrix.png"),
            title=f"{config.eval.split}: accuracy {out['accuracy']:.3f}",
        )
        durations = source.durations
        if result["view_weights"].shape[1] > 1:
            plots.view_importance(
                result["view_weights"],
                source.labels,
                classes,
                durations,
                os.path.join(out_dir, "view_importance.png"),
            )
        write_predictions(
            os.path.join(out_dir, "predictions.csv"),
            source,
            classes,
            result["probs"],
            result["view_weights"],
            durations,
        )
    return out


def write_predictions(path, source, classes, probs, view_weights, durations) -> None:
    """One row per sample: id, label, predicted, top-3 classes and probabilities, view weights."""
    top = np.argsort(-probs, axis=1)[:, :3]
    header = ["gravityspy_id", "label", "predicted"]
    for k in range(1, 4):
        header += [f"top{k}_class", f"top{k}_prob"]
    if view_weights.shape[1] == len(durations):
        header += [f"view_weight_{d}" for d in durations]
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        for i in range(len(source)):
            row = [source.ids[i], classes[source.labels[i]], classes[top[i, 0]]]
            for c in top[i]:
                row += [classes[c], f"{probs[i, c]:.6f}"]
            if view_weights.shape[1] == len(durations):
                row += [f"{w:.6f}" for w in view_weights[i]]
            writer.writerow(row)
