"""Evaluation from a checkpoint: official GreenEarthNet NDVI scores of the model and baselines.

For every cube of `config.eval.split`: forecast deltas, reflectance = BAP + delta, NDVI; write
`<pred_dir>/<region>/<cubename>.nc` (`ndvi_pred` on the cube's 20 target timestamps, the layout
the official scorer reads); score against the full daily target cube with `metrics.py`, as are
persistence (the last BAP) and, when `config.eval.climatology_dir` holds the official
climatology predictions, climatology. Outperformance is against climatology when given, else
persistence. Writes metrics.json and figures under `<workdir>/eval/<split>/`.
"""

from __future__ import annotations

import json
import math
import os
from typing import Any

import jax
import ml_collections
import numpy as np
import xarray as xr
from absl import logging

from jaxlab.core import checkpoint
from jaxlab.core import mesh as mesh_lib
from jaxlab.data import pipeline
from jaxlab.vegetation import data, metrics, plots, train

TARGET_VARIABLES = ("s2_B8A", "s2_B04", "s2_dlmask", "s2_SCL")


def ndvi(reflectance: np.ndarray) -> np.ndarray:
    """[..., 4] (B02, B03, B04, B8A) -> NDVI [...] (the scorer's formula)."""
    red, nir = reflectance[..., 2], reflectance[..., 3]
    return (nir - red) / (nir + red + 1e-8)


def read_target(path: str, engine: str, start: int, days: int) -> dict[str, Any]:
    """The daily arrays the scorer reads from a target cube, and its coords."""
    with data.open_cube(path, engine) as ds:
        for name in (*TARGET_VARIABLES, "esawc_lc", "geom_cls", "cop_dem"):
            if name not in ds.variables:
                raise data.CubeError(f"{path}: missing variable {name!r}, which the scorer reads.")
        window = ds.isel(time=slice(start, start + days))
        out = {name: np.asarray(window[name].values, np.float32) for name in TARGET_VARIABLES}
        out["esawc_lc"] = np.asarray(ds["esawc_lc"].values)
        out["time"] = window["time"].values
        out["lat"], out["lon"] = ds["lat"].values, ds["lon"].values
    return out


def write_prediction(path: str, ndvi_pred: np.ndarray, time, lat, lon) -> None:
    """`ndvi_pred` (time, lat, lon) float32 NetCDF at `path` (official prediction layout)."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    ds = xr.Dataset(
        {"ndvi_pred": (("time", "lat", "lon"), ndvi_pred.astype(np.float32))},
        coords={"time": time, "lat": lat, "lon": lon},
    )
    tmp = f"{path}.{os.getpid()}.tmp"
    ds.to_netcdf(tmp, engine="h5netcdf")
    os.replace(tmp, path)


def read_prediction(path: str, times, engine: str) -> np.ndarray:
    """A prediction file's `ndvi_pred` at `times` [T, H, W] (the official `sel(time=...)`)."""
    with data.open_cube(path, engine) as ds:
        if "ndvi_pred" not in ds.variables:
            raise data.CubeError(f"{path}: missing variable 'ndvi_pred' (time, lat, lon).")
        return np.asarray(ds["ndvi_pred"].sel(time=times).values, np.float32)


def _json_safe(value):
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def read_climatology(clim_dir: str, region: str, name: str, times, engine: str):
    """The climatology baseline of one cube, NDVI [T, H, W] at `times`, or None if not given.

    `clim_dir` holds official-layout predictions (`<region>/<cubename>.nc`, `ndvi_pred`), e.g. the
    GreenEarthNet climatology; an empty `clim_dir` or a cube it lacks gives None.
    """
    if not clim_dir:
        return None
    path = os.path.join(clim_dir, region, name)
    if not os.path.exists(path):
        return None
    return read_prediction(path, times, engine)


def summarize_scores(scores: dict[str, list]) -> dict[str, Any]:
    """Dataset scores of the model and baselines from per-cube `metrics.pixel_scores`.

    Args:
      scores: "model", "persistence" and "climatology" -> [(cube id, pixel scores)]; climatology
        may be empty (not available).
    Returns:
      `ndvi_*` (model), `persistence_ndvi_*`, `climatology_ndvi_*` and `climatology_num_cubes`
      when climatology was scored, and `outperform_vs_<reference>` with the mean gains, the
      reference being climatology (as in the paper) when available, else persistence.
    """
    results: dict[str, Any] = {}
    persistence_official = metrics.summarize(scores["persistence"])
    persistence_r0 = metrics.summarize(scores["persistence"], undefined_r=0.0)
    for key, value in metrics.summarize(scores["model"]).items():
        results[f"ndvi_{key.lower()}"] = value
    for key, value in persistence_official.items():
        results[f"persistence_ndvi_{key.lower()}"] = value
    # The official R^2 of a constant forecast is NaN (undefined r); 0 is its limit.
    results["persistence_ndvi_r2_official"] = persistence_official["R2"]
    results["persistence_ndvi_r2"] = persistence_r0["R2"]
    reference = "climatology" if scores["climatology"] else "persistence"
    if scores["climatology"]:
        results["climatology_num_cubes"] = len(scores["climatology"])
        for key, value in metrics.summarize(scores["climatology"]).items():
            results[f"climatology_ndvi_{key.lower()}"] = value
    for key, value in metrics.outperformance(scores["model"], scores[reference]).items():
        results[f"{key}_vs_{reference}"] = value
    return results


def restore_params(config, workdir: str, mesh, b) -> tuple[Any, int]:
    manager = checkpoint.make_manager(os.path.join(workdir, "checkpoints"), read_only=True)
    step = checkpoint.select_step(
        manager, config.eval.checkpoint, config.eval.best_metric, config.eval.best_mode
    )
    state = checkpoint.restore(manager, b["target"], step=step)
    return state.params, step


def evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, float]:
    """Restores `config.eval.checkpoint`, scores `config.eval.split`; returns the metrics."""
    if config.eval.climatology_dir and not os.path.isdir(config.eval.climatology_dir):
        raise FileNotFoundError(
            f"eval.climatology_dir={config.eval.climatology_dir!r} is not a directory; expected "
            "climatology predictions as <dir>/<region>/<cubename>.nc with `ndvi_pred`."
        )
    mesh = mesh_lib.make_mesh(config.mesh)
    b = train.build(config, workdir, mesh)
    params, step = restore_params(config, workdir, mesh, b)
    norm, d = b["norm"], config.data
    source = data.load(config, b["root"], config.eval.split, norm)
    eval_fn = train.make_eval_step(b["model"], config, mesh)

    out_dir = os.path.join(workdir, "eval", config.eval.split)
    pred_dir = config.eval.pred_dir or os.path.join(out_dir, "preds")
    persistence_dir = os.path.join(out_dir, "preds_persistence")
    os.makedirs(out_dir, exist_ok=True)
    target_index = source.frame_days[d.num_context :]
    scores = {"model": [], "persistence": [], "climatology": []}
    amp_true = np.zeros(d.num_target)
    amp_pred = np.zeros(d.num_target)
    amp_count = np.zeros(d.num_target)
    plotted = 0
    record_index = 0
    batches = pipeline.eval_batches(source, global_batch_size=config.eval.global_batch_size)
    for local_batch, valid in batches:
        batch = mesh_lib.global_batch(local_batch, mesh)
        _, pred = eval_fn(params, batch, mesh_lib.global_batch(valid, mesh))
        pred = np.asarray(jax.device_get(pred))  # [B, T, H, W, 4]
        for i in np.flatnonzero(valid):
            record = {k: v[i] for k, v in local_batch.items()}
            index = int(record["index"])
            path, start = source.items[index]
            region, name = data.region_and_name(path)
            cube_id = f"{region}/{name}" if start == 0 else f"{region}/{name}@{start}"
            target = read_target(path, d.engine, start, d.cube_days)
            times = target["time"][target_index]
            refl = norm.unbands(record["bap"][None] + pred[i])  # [T, H, W, 4]
            model_ndvi = ndvi(refl)
            bap_refl = norm.unbands(record["bap"])
            persistence_ndvi = np.broadcast_to(ndvi(bap_refl), model_ndvi.shape)
            file_name = name if start == 0 else name.replace(".nc", f"_{start}.nc")
            write_prediction(
                os.path.join(pred_dir, region, file_name),
                model_ndvi,
                times,
                target["lat"],
                target["lon"],
            )
            write_prediction(
                os.path.join(persistence_dir, region, file_name),
                persistence_ndvi,
                times,
                target["lat"],
                target["lon"],
            )
            scores["model"].append(
                (cube_id, metrics.pixel_scores(target, model_ndvi, target_index))
            )
            scores["persistence"].append(
                (cube_id, metrics.pixel_scores(target, persistence_ndvi, target_index))
            )
            clim = read_climatology(config.eval.climatology_dir, region, name, times, d.engine)
            if clim is not None:
                scores["climatology"].append(
                    (cube_id, metrics.pixel_scores(target, clim, target_index))
                )
            mask = record["target_mask"][..., None]
            amp_true += np.sum(mask * np.abs(record["target_delta"]), axis=(1, 2, 3))
            amp_pred += np.sum(mask * np.abs(pred[i]), axis=(1, 2, 3))
            amp_count += np.sum(mask, axis=(1, 2, 3)) * pred.shape[-1]
            if plotted < config.eval.num_plot_cubes and jax.process_index() == 0:
                plot_cube(
                    source,
                    index,
                    target,
                    target_index,
                    refl,
                    model_ndvi,
                    persistence_ndvi,
                    out_dir,
                    f"cube{plotted}",
                )
                plotted += 1
            record_index += 1

    results: dict[str, Any] = {"checkpoint_step": step, "num_cubes": record_index}
    if config.eval.climatology_dir and len(scores["climatology"]) < record_index:
        logging.warning(
            "Climatology predictions found for %d of %d cubes in %s; scored on those.",
            len(scores["climatology"]),
            record_index,
            config.eval.climatology_dir,
        )
    results.update(summarize_scores(scores))
    results["delta_amplitude_true"] = (amp_true / np.maximum(amp_count, 1)).tolist()
    results["delta_amplitude_pred"] = (amp_pred / np.maximum(amp_count, 1)).tolist()
    results = {k: _json_safe(v) for k, v in results.items()}

    if jax.process_index() == 0:
        plots.delta_amplitude(
            np.asarray(results["delta_amplitude_true"]),
            np.asarray(results["delta_amplitude_pred"]),
            os.path.join(out_dir, "delta_amplitude.png"),
        )
        with open(os.path.join(out_dir, "metrics.json"), "w") as f:
            json.dump(results, f, indent=2)
    logging.info(
        "%s: NDVI RMSE %.4f (persistence %.4f), R^2 %.3f (persistence %.3f), %d cubes",
        config.eval.split,
        results["ndvi_rmse"] or np.nan,
        results["persistence_ndvi_rmse"] or np.nan,
        results["ndvi_r2"] or np.nan,
        results["persistence_ndvi_r2"] or np.nan,
        record_index,
    )
    if "climatology_ndvi_rmse" in results:
        logging.info(
            "Climatology (%d cubes): NDVI RMSE %.4f, R^2 %.3f; outperformance %.3f",
            results["climatology_num_cubes"],
            results["climatology_ndvi_rmse"] or np.nan,
            results["climatology_ndvi_r2"] or np.nan,
            results["outperform_vs_climatology"] or np.nan,
        )
    return results


def plot_cube(
    source, index, target, target_index, refl, model_ndvi, persistence_ndvi, out_dir, stem
) -> None:
    """Maps per target frame and a few pixel time series of one cube."""
    truth_ndvi, valid = metrics.target_ndvi(
        target["s2_B8A"], target["s2_B04"], target["s2_dlmask"], target["s2_SCL"]
    )
    raw = source.read_raw(index)
    nc = source.config.data.num_context
    truth_refl = np.where(raw["clear"][nc:, ..., None], raw["frames"][nc:], np.nan)
    title = os.path.basename(source.items[index][0])
    plots.maps(
        truth_refl,
        refl,
        truth_ndvi[target_index],
        model_ndvi,
        os.path.join(out_dir, f"{stem}_maps.png"),
        title,
    )
    h, w = model_ndvi.shape[1:]
    pix = [(h // 4, w // 4), (h // 2, w // 2), (3 * h // 4, 3 * w // 4)]
    context_index = source.frame_days[:nc]
    context_ndvi = truth_ndvi[context_index]
    series = lambda a: np.stack([a[:, y, x] for y, x in pix], axis=1)  # noqa: E731
    plots.pixel_series(
        context_index,
        series(context_ndvi),
        target_index,
        series(truth_ndvi[target_index]),
        series(model_ndvi),
        series(np.asarray(persistence_ndvi)),
        os.path.join(out_dir, f"{stem}_pixels.png"),
        title,
    )
    del valid
