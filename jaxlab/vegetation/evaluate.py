"""Evaluation from a checkpoint: official GreenEarthNet NDVI scores of the model and baselines.

For every cube of `config.eval.split`: forecast deltas, reflectance = BAP + delta, NDVI; write
`<pred_dir>/<region>/<cubename>.nc` (`ndvi_pred` and the four predicted bands on the cube's 20
target timestamps, the layout the official scorer reads; clipped to the physical range, NDVI to
[-1, 1] and reflectance to [0, 1], with the clipped values counted and logged); score against
the full daily target cube with `metrics.py`, as are persistence (the last BAP) and, when
`config.eval.climatology_dir` holds the official climatology predictions, climatology.
Outperformance is against climatology when given, else persistence. Writes metrics.json and
figures under `<workdir>/eval/<split>/`. `validation_metrics` is the training loop's pass.
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

from jaxlab.core import mesh as mesh_lib
from jaxlab.core import restore, steps_jit
from jaxlab.data import pipeline
from jaxlab.vegetation import data, metrics, plots, steps

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
        # The file's own dtype, as the scorer computes in it (r of a near-constant series is
        # rounding-level, so it depends on the dtype).
        out = {name: np.asarray(window[name].values) for name in TARGET_VARIABLES}
        out["esawc_lc"] = np.asarray(ds["esawc_lc"].values)
        out["time"] = window["time"].values
        out["lat"], out["lon"] = ds["lat"].values, ds["lon"].values
    return out


def clip_counted(x: np.ndarray, low: float, high: float) -> tuple[np.ndarray, int]:
    """(x clipped to [low, high], how many values lay outside); NaN stays NaN, uncounted."""
    with np.errstate(invalid="ignore"):
        outside = int(np.sum((x < low) | (x > high)))
    return np.clip(x, low, high), outside


def write_prediction(
    path: str,
    ndvi_pred: np.ndarray,
    time,
    lat,
    lon,
    bands: dict[str, np.ndarray] | None = None,
    *,
    engine: str = "netcdf4",
) -> dict[str, int]:
    """NetCDF at `path` in the official prediction layout, clipped to the physical range.

    Args:
      engine: xarray's NetCDF4 writer (`config.data.engine`).
      ndvi_pred: [T, H, W] NDVI, written as `ndvi_pred` clipped to [-1, 1] (as the scorer reads).
      bands: band name (e.g. "s2_B04") -> [T, H, W] reflectance, written clipped to [0, 1].
    Returns:
      {"ndvi": values clipped, "reflectance": values clipped (all bands), "ndvi_values": size,
      "reflectance_values": size}.
    """
    dims = ("time", "lat", "lon")
    ndvi_pred, ndvi_clipped = clip_counted(np.asarray(ndvi_pred, np.float32), -1.0, 1.0)
    variables = {"ndvi_pred": (dims, ndvi_pred)}
    counts = {"ndvi": ndvi_clipped, "ndvi_values": int(ndvi_pred.size)}
    counts.update(reflectance=0, reflectance_values=0)
    for name, values in (bands or {}).items():
        values, clipped = clip_counted(np.asarray(values, np.float32), 0.0, 1.0)
        variables[name] = (dims, values)
        counts["reflectance"] += clipped
        counts["reflectance_values"] += int(values.size)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    ds = xr.Dataset(variables, coords={"time": time, "lat": lat, "lon": lon})
    tmp = f"{path}.{os.getpid()}.tmp"
    ds.to_netcdf(tmp, engine=engine)
    os.replace(tmp, path)
    return counts


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
      when climatology was scored, and `outperform_vs_<reference>` with every mean gain
      (`gain_<metric>_mean_vs_<reference>`), the reference being climatology (as in the paper)
      when available, else persistence. The official scorer's numbers, NaN rules included.
    """
    results: dict[str, Any] = {}
    for key, value in metrics.summarize(scores["model"]).items():
        results[f"ndvi_{key.lower()}"] = value
    # Persistence is a constant forecast: its official R^2 is rounding-level (see
    # metrics.pearson_r), reported as computed.
    for key, value in metrics.summarize(scores["persistence"]).items():
        results[f"persistence_ndvi_{key.lower()}"] = value
    reference = "climatology" if scores["climatology"] else "persistence"
    if scores["climatology"]:
        results["climatology_num_cubes"] = len(scores["climatology"])
        for key, value in metrics.summarize(scores["climatology"]).items():
            results[f"climatology_ndvi_{key.lower()}"] = value
    for key, value in metrics.outperformance(scores["model"], scores[reference]).items():
        results[f"{key}_vs_{reference}"] = value
    return results


def validation_metrics(eval_step, params, source, mesh, batch_size) -> dict[str, float]:
    """One ordered pass with `Parts.eval_step`: val_loss (mean per record) and the clear-pixel
    delta RMSE of the model and of persistence (delta 0), in normalised units."""
    t, _ = steps_jit.eval_pass(eval_step, params, source, mesh, batch_size, keep_outputs=False)
    count = max(float(t["count"]), 1.0)
    return {
        "val_loss": float(t["loss"] / t["records"]),
        "val_delta_rmse": float(np.sqrt(t["sq_err"] / count)),
        "val_persistence_delta_rmse": float(np.sqrt(t["sq_err_persistence"] / count)),
    }


def evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, float]:
    """Restores `config.eval.checkpoint`, scores `config.eval.split`; returns the metrics."""
    if config.eval.climatology_dir and not os.path.isdir(config.eval.climatology_dir):
        raise FileNotFoundError(
            f"eval.climatology_dir={config.eval.climatology_dir!r} is not a directory; expected "
            "climatology predictions as <dir>/<region>/<cubename>.nc with `ndvi_pred`."
        )
    mesh = mesh_lib.make_mesh(config.mesh)
    d = config.data
    root = data.prepare(config, workdir)
    norm = data.normalisation(config, workdir, root)
    source = data.load(config, root, config.eval.split, norm)
    parts = steps.build(config, mesh)
    state, step = restore.restore_for_eval(config, workdir, parts)
    params = state.params

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
    clipped = {"model": [], "persistence": []}
    by_band = lambda refl: {b: refl[..., i] for i, b in enumerate(d.bands)}  # noqa: E731
    batches = pipeline.eval_batches(source, global_batch_size=config.eval.global_batch_size)
    for local_batch, valid in batches:
        batch = mesh_lib.global_batch(local_batch, mesh)
        _, pred = parts.eval_step(params, batch, mesh_lib.global_batch(valid, mesh))
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
            where = (times, target["lat"], target["lon"])
            clipped["model"].append(
                write_prediction(
                    os.path.join(pred_dir, region, file_name),
                    model_ndvi,
                    *where,
                    by_band(refl),
                    engine=d.engine,
                )
            )
            clipped["persistence"].append(
                write_prediction(
                    os.path.join(persistence_dir, region, file_name),
                    persistence_ndvi,
                    *where,
                    by_band(np.broadcast_to(bap_refl, refl.shape)),
                    engine=d.engine,
                )
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
    results.update(clip_summary(clipped))
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


def clip_summary(clipped: dict[str, list[dict[str, int]]]) -> dict[str, int]:
    """Totals of `write_prediction`'s clip counts per forecast, logged; e.g. clipped_ndvi_model."""
    out = {}
    for forecast, counts in clipped.items():
        for kind, low, high in (("ndvi", -1, 1), ("reflectance", 0, 1)):
            n = sum(c[kind] for c in counts)
            total = sum(c[f"{kind}_values"] for c in counts)
            out[f"clipped_{kind}_{forecast}"] = n
            logging.info(
                "%s predictions: clipped %d of %d %s values to [%d, %d] in the written files.",
                forecast,
                n,
                total,
                kind,
                low,
                high,
            )
    return out


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
