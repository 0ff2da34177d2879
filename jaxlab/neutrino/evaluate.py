"""Evaluation from a checkpoint: competition metric, size breakdown, submission CSV, plots."""

from __future__ import annotations

import functools
import json
import os
from typing import Any

import jax
import ml_collections
import numpy as np
import pyarrow as pa
import pyarrow.csv as pa_csv

from jaxlab.core import checkpoint
from jaxlab.core import mesh as mesh_lib
from jaxlab.neutrino import data, metrics, plots


def eval_step(params: Any, batch: dict[str, jax.Array], *, model: Any) -> jax.Array:
    """Raw direction vectors [G, E, 3] (deterministic)."""
    return model.apply({"params": params}, batch, deterministic=True)


def make_eval_step(model: Any, mesh: jax.sharding.Mesh):
    """`eval_step` jitted once for this mesh: (params, batch) -> predictions, replicated."""
    return jax.jit(
        functools.partial(eval_step, model=model),
        in_shardings=(mesh_lib.replicated(mesh), mesh_lib.data_sharding(mesh)),
        out_shardings=mesh_lib.replicated(mesh),
    )


def predict_split(
    step: Any,
    params: Any,
    source: data.IceCubeSource,
    processor: data.EventProcessor,
    spec: data.PackSpec,
    mesh: jax.sharding.Mesh,
    packs_per_batch: int,
) -> dict[str, np.ndarray]:
    """One ordered pass over `source`: per event (in source order) event_id, prediction [N, 3],
    true direction [N, 3], num_pulses, num_doms, plus `has_labels`."""
    keys = ("event_id", "direction", "num_pulses", "num_doms")
    collected: dict[str, list] = {k: [] for k in (*keys, "pred")}
    for local, full in data.eval_batches(source, processor, spec, packs_per_batch=packs_per_batch):
        pred = step(params, mesh_lib.global_batch(data.model_inputs(local), mesh))
        valid = full["event_valid"]
        collected["pred"].append(np.asarray(jax.device_get(pred))[valid])
        for k in keys:
            collected[k].append(full[k][valid])
    result = {k: np.concatenate(v) for k, v in collected.items()}
    if len(result["event_id"]) != len(source):
        raise RuntimeError(
            f"Evaluation saw {len(result['event_id'])} events, the split has {len(source)}."
        )
    result["has_labels"] = np.asarray(source.has_labels)
    return result


def scalar_metrics(result: dict[str, np.ndarray]) -> dict[str, float]:
    """mean / median angular error (competition formula) of a `predict_split` result."""
    if not bool(result["has_labels"]):
        return {}
    errors = event_errors(result)
    return {
        "mean_angular_error": float(errors.mean()),
        "median_angular_error": float(np.median(errors)),
    }


def event_errors(result: dict[str, np.ndarray]) -> np.ndarray:
    az_true, zen_true = metrics.vector_to_angles(result["direction"])
    az_pred, zen_pred = metrics.vector_to_angles(result["pred"])
    return metrics.angular_errors(az_true, zen_true, az_pred, zen_pred)


def constant_baseline(train_meta: dict[str, np.ndarray], result: dict[str, np.ndarray]) -> float:
    """Score of always predicting the mean training direction (about pi / 2 when isotropic)."""
    from jaxlab.neutrino import synthetic

    mean = synthetic.direction_vector(train_meta["azimuth"], train_meta["zenith"]).mean(0)
    if np.linalg.norm(mean) < 1e-9:
        mean = np.array([0.0, 0.0, 1.0])
    az, zen = metrics.vector_to_angles(mean[None])
    az_true, zen_true = metrics.vector_to_angles(result["direction"])
    return metrics.angular_dist_score(az_true, zen_true, az[0], zen[0])


def write_submission(result: dict[str, np.ndarray], path: str) -> None:
    """Kaggle submission: event_id, azimuth, zenith (radians), sorted by event_id."""
    azimuth, zenith = metrics.vector_to_angles(result["pred"])
    order = np.argsort(result["event_id"], kind="stable")
    table = pa.table(
        {
            "event_id": pa.array(result["event_id"][order], pa.int64()),
            "azimuth": pa.array(azimuth[order]),
            "zenith": pa.array(zenith[order]),
        }
    )
    pa_csv.write_csv(table, path, pa_csv.WriteOptions(quoting_style="none"))


def evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
    """Restores `config.eval.checkpoint`; writes metrics.json, submission.csv and PNGs."""
    from jaxlab.neutrino import train  # build() lives with the train step

    mesh = mesh_lib.make_mesh(config.mesh)
    root = data.prepare(config, workdir)
    source = data.load_split(config, root, config.eval.split)
    processor = data.make_processor(config, root)
    model, _, spec, _, target, _ = train.build(config, mesh)
    manager = checkpoint.make_manager(os.path.join(workdir, "checkpoints"), read_only=True)
    step = checkpoint.select_step(
        manager, config.eval.checkpoint, config.eval.best_metric, config.eval.best_mode
    )
    state = checkpoint.restore(manager, target, step=step)

    result = predict_split(
        make_eval_step(model, mesh),
        state.params,
        source,
        processor,
        spec,
        mesh,
        config.eval.packs_per_batch,
    )
    out: dict[str, Any] = {"checkpoint_step": step, "num_events": len(result["event_id"])}
    out_dir = os.path.join(workdir, "eval", config.eval.split)
    os.makedirs(out_dir, exist_ok=True)
    if source.has_labels:
        errors = event_errors(result)
        train_meta = data.read_meta(root, "train", data.parse_batch_ids(config.data.train_batches))
        out.update(scalar_metrics(result))
        out["baseline_constant"] = constant_baseline(train_meta, result)
        out["by_num_pulses"] = metrics.breakdown(
            errors, result["num_pulses"], tuple(config.eval.pulse_bins)
        )
        out["by_num_doms"] = metrics.breakdown(
            errors, result["num_doms"], tuple(config.eval.dom_bins)
        )
    if jax.process_index() == 0:
        with open(os.path.join(out_dir, "metrics.json"), "w") as f:
            json.dump(out, f, indent=2)
        write_submission(result, os.path.join(out_dir, "submission.csv"))
        if source.has_labels:
            plots.error_vs_size(out, os.path.join(out_dir, "error_vs_size.png"))
            _, zen_true = metrics.vector_to_angles(result["direction"])
            _, zen_pred = metrics.vector_to_angles(result["pred"])
            plots.zenith_scatter(zen_true, zen_pred, os.path.join(out_dir, "zenith.png"))
    return out
