"""Evaluation from a checkpoint: competition metric, size breakdown, submission CSV, plots."""

from __future__ import annotations

import json
import os
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pyarrow as pa
import pyarrow.csv as pa_csv

from jaxlab.core import loop, restore
from jaxlab.core import mesh as mesh_lib
from jaxlab.neutrino import data, data_packing, data_pipeline, metrics, plots, steps
from jaxlab.neutrino.format import direction_vector


def predict_split(
    eval_step: Any,
    params: Any,
    source: data.IceCubeSource,
    processor: data_packing.EventProcessor,
    spec: data_packing.PackSpec,
    mesh: jax.sharding.Mesh,
    packs_per_batch: int,
) -> dict[str, np.ndarray]:
    """One ordered pass with `Parts.eval_step` over `source`.

    Returns per event (in source order) event_id, prediction [N, 3], true direction [N, 3],
    num_pulses, num_doms; `has_labels`; and `sums` (the eval step's on-device sums).
    """
    keys = ("event_id", "direction", "num_pulses", "num_doms")
    collected: dict[str, list] = {k: [] for k in keys}
    preds, keeps, totals = [], [], None
    throttle = loop.StepThrottle()
    batches = data_pipeline.eval_batches(source, processor, spec, packs_per_batch=packs_per_batch)
    for local, full in batches:
        batch = mesh_lib.global_batch(data_packing.model_inputs(local), mesh)
        valid = mesh_lib.global_batch(local["event_valid"], mesh)
        sums, pred = eval_step(params, batch, valid)
        throttle(pred)
        totals = sums if totals is None else jax.tree.map(jnp.add, totals, sums)
        preds.append(pred)
        keeps.append(full["event_valid"])
        for k in keys:
            collected[k].append(full[k][full["event_valid"]])
    collected["pred"] = [p[keep] for p, keep in zip(jax.device_get(preds), keeps, strict=True)]
    result = {k: np.concatenate(v) for k, v in collected.items()}
    result["sums"] = {k: float(v) for k, v in jax.device_get(totals).items()}
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
    mean = direction_vector(train_meta["azimuth"], train_meta["zenith"]).mean(0)
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
    mesh = mesh_lib.make_mesh(config.mesh)
    root = data.prepare(config, workdir)
    source = data.load_split(config, root, config.eval.split)
    processor = data_packing.make_processor(config, root)
    parts = steps.build(config, mesh)
    state, step = restore.restore_for_eval(config, workdir, parts)

    result = predict_split(
        parts.eval_step,
        state.params,
        source,
        processor,
        parts.extras.spec,
        mesh,
        config.eval.global_batch_size,
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
