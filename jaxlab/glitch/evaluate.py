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
import json
import os
from collections.abc import Callable
from typing import Any

import jax
import ml_collections
import numpy as np

from jaxlab.core import mesh as mesh_lib
from jaxlab.core import restore, steps_jit
from jaxlab.glitch import data, metrics, plots, steps


def predict_split(
    eval_step: Callable, params: Any, source: Any, mesh: Any, batch_size: int
) -> dict[str, Any]:
    """One ordered pass with `Parts.eval_step`: probs [N, C], view_weights [N, V], confusion
    [C, C] and the mean loss."""
    totals, outputs = steps_jit.eval_pass(eval_step, params, source, mesh, batch_size)
    probs = outputs["probs"]
    confusion = metrics.confusion_matrix(source.labels, probs.argmax(-1), probs.shape[1])
    return {
        "probs": probs,
        "view_weights": outputs["view_weights"],
        "confusion": confusion,
        "loss": float(totals["loss_sum"]) / len(source),
    }


def evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
    """Restores `config.eval.checkpoint` and evaluates `config.eval.split`; writes the files."""
    mesh = mesh_lib.make_mesh(config.mesh)
    data_dir = data.prepare(config, workdir)
    source = data.load(config, data_dir, config.eval.split)
    train_source = data.load(config, data_dir, "train")
    classes = train_source.classes
    if source.classes != classes:
        raise ValueError(
            f"split {config.eval.split!r} has classes {source.classes}, train has {classes}."
        )
    parts = steps.build(config, mesh, num_classes=len(classes))
    state, step = restore.restore_for_eval(config, workdir, parts)

    result = predict_split(
        parts.eval_step, state.params, source, mesh, config.eval.global_batch_size
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
        write_labelled_predictions(
            os.path.join(out_dir, "predictions.csv"),
            source,
            classes,
            result["probs"],
            result["view_weights"],
            durations,
        )
    return out


def write_labelled_predictions(path, source, classes, probs, view_weights, durations) -> None:
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
