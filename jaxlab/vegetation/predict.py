"""Vegetation forecasts from context-only GreenEarthNet minicubes, in the official layout.

    jaxlab predict --model=runs/vegetation/bundle --input=<cubes> --out=preds \
        [batch_size=N] [normalisation=PATH] [plots=true|false]

`model` is a training workdir or an exported bundle (`jaxlab export`); both give bitwise the same
files. `inputs` is one cube file, a tile folder of cubes (`<tile>/<cube>.nc`) or a track folder
in the test-track layout (`<track>/<tile>/<cube>.nc`).

Input cube (what a real forecast has: no target frames). The GreenEarthNet variables the model
reads (`config.data.bands`, the cloud-mask variables, `esawc_lc` and the E-OBS weather), with
  - Sentinel-2 on a daily `time` axis holding at least the 50 context days (frames on days 4, 9,
    ..., 49); values after the context, if any (NaN or real), are never read;
  - the E-OBS weather for the context *and the forecast period*: 150 daily values from the first
    context day, on `time` (a 150-day `time` with NaN Sentinel-2 after day 50) or on a dated axis
    of its own (e.g. `time_eobs`, when `time` holds only the context days).
The readers and checks are the training ones (`data.read_window`, `data_checks`): a malformed
cube is one error naming the file and the variable.

Output, per input cube `<tile>/<cube>.nc`:
  - `{out}/{tile}/{cube}.nc`, the official GreenEarthNet prediction layout: `ndvi_pred` and the
    four predicted bands (`s2_B02`, `s2_B03`, `s2_B04`, `s2_B8A`) as float32 (time, lat, lon),
    NDVI clipped to [-1, 1] and reflectance to [0, 1] (`evaluate.write_prediction`; clipped
    values counted in the log), `time` = the 20 target dates (days 54, 59, ..., 149);
  - `{out}/{tile}/{cube}.png`: RGB and NDVI forecast strips with colorbars and dates.

Normalisation. The model reads reflectance and weather normalised with the training track's
statistics (`normalisation.json`, data_normalisation.py), found in this order:
  1. `normalisation=PATH` (a `normalisation.json`);
  2. `<model>/normalisation.json` (a training workdir; a bundle once export copies it);
  3. `<source workdir>/normalisation.json`, the workdir named in the bundle's `bundle.json`;
  4. recomputed from the config: `compute_normalisation` is deterministic, so the training
     track (`config.data.dir`, or for synthetic data the synthetic training cubes, rewritten
     from the config's seed into a temporary folder) gives the same numbers bitwise.
"""

from __future__ import annotations

import glob
import json
import os
import tempfile
import time
from typing import Any

import jax
import ml_collections
import numpy as np
import xarray as xr
from absl import logging

from jaxlab.core import bundle as bundle_lib
from jaxlab.core import loop, portable
from jaxlab.vegetation import data, data_normalisation, evaluate, plots
from jaxlab.vegetation import model as model_lib

NORMALISATION_FILE = "normalisation.json"
DEMO_INPUT_DIR = "predict_input"
MODEL_KEYS = ("context", "landcover", "weather", "time_meta", "target_start_doy", "target_doy")


# ----------------------------------------------------------------------------- inputs


def list_inputs(inputs: str) -> list[tuple[str, str]]:
    """(tile, path) of every cube named by `inputs` (a file, a tile folder or a track folder)."""
    if os.path.isfile(inputs):
        return [(os.path.basename(os.path.dirname(os.path.abspath(inputs))), inputs)]
    if not os.path.isdir(inputs):
        raise FileNotFoundError(f"--input={inputs}: no such cube file or folder.")
    paths = sorted(glob.glob(os.path.join(inputs, "*", "*.nc")))
    if not paths:
        paths = sorted(glob.glob(os.path.join(inputs, "*.nc")))
    if not paths:
        raise FileNotFoundError(
            f"--input={inputs}: no cubes (looked for <tile>/<cube>.nc and <cube>.nc)."
        )
    return [(os.path.basename(os.path.dirname(os.path.abspath(p))), p) for p in paths]


def frame_days(config: ml_collections.ConfigDict) -> np.ndarray:
    """[30] day of each context and target frame in the cube (4, 9, ..., 149)."""
    d = config.data
    return d.first_frame + d.frame_stride * np.arange(d.num_context + d.num_target)


def read_cube(path: str, config, norm) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """(model inputs of one context-only cube, its target dates / lat / lon / date of the BAP)."""
    days = frame_days(config)
    raw = data.read_window(path, config, 0, days, context_only=True)
    inputs = data.model_inputs(raw, norm, config)
    nc = config.data.num_context
    where = {
        "times": raw["frame_dates"][nc:].values,
        "lat": raw["lat"],
        "lon": raw["lon"],
        "last_context_date": raw["frame_dates"][nc - 1],
    }
    return inputs, where


# ----------------------------------------------------------------------------- normalisation


def find_normalisation(
    model: str, config: ml_collections.ConfigDict, explicit: str = ""
) -> tuple[data_normalisation.Normalisation, str]:
    """(the training normalisation, where it came from); the order is in the module docstring."""
    candidates = [explicit] if explicit else []
    candidates.append(os.path.join(model, NORMALISATION_FILE))
    info_file = os.path.join(model, bundle_lib.INFO_FILE)
    if os.path.isfile(info_file):
        with open(info_file) as f:
            source = json.load(f).get("source_workdir")
        if source:
            candidates.append(os.path.join(source, NORMALISATION_FILE))
    for path in candidates:
        if os.path.isfile(path):
            return data_normalisation.Normalisation.load(path), path
    if explicit:
        raise FileNotFoundError(f"normalisation={explicit}: no such file.")
    return recompute_normalisation(config), "recomputed from the config's training data"


def recompute_normalisation(config: ml_collections.ConfigDict) -> data_normalisation.Normalisation:
    """The training statistics recomputed from `config` alone (deterministic, see the module
    docstring): the synthetic training cubes rewritten from the seed, or `config.data.dir`."""
    d = config.data
    if not d.synthetic:
        if not d.dir:
            raise ValueError(
                "No normalisation.json with the model and config.data.dir is empty: pass "
                "normalisation=<training workdir>/normalisation.json."
            )
        return _normalisation_of_track(config, d.dir)
    with tempfile.TemporaryDirectory(prefix="jaxlab_vegetation_norm_") as root:
        data.write_synthetic(config, root, tracks=(d.train_track,))
        return _normalisation_of_track(config, root)


def _normalisation_of_track(config, root: str) -> data_normalisation.Normalisation:
    source = data.CubeSource(root, config.data.train_track, config)
    norm = data.compute_normalisation(source, config.data.stats_max_cubes, config.data.percentiles)
    # Through JSON, as the training run saved and reloaded it: bitwise the same float32 arrays.
    return data_normalisation.Normalisation(json.loads(json.dumps(norm.stats)))


# ----------------------------------------------------------------------------- predict


def _flag(name: str, value: str | bool) -> bool:
    if isinstance(value, bool):
        return value
    if value.lower() in ("true", "yes", "1"):
        return True
    if value.lower() in ("false", "no", "0"):
        return False
    raise ValueError(f"predict option {name}={value!r}: expected true or false.")


def network(config: ml_collections.ConfigDict, batch_size: int | None = None) -> portable.Network:
    """The predict network: `MODEL_KEYS` record batch [B, ...] -> {"deltas": [B, T, H, W, 4]}
    (normalised units; what a bundle exports as its StableHLO predict)."""
    model = model_lib.make_model(config)
    size = batch_size or config.eval.global_batch_size
    batch = jax.eval_shape(lambda: model_lib.dummy_batch(config, size))
    return portable.Network(
        fn=lambda p, inputs: {"deltas": model.apply({"params": p}, inputs)},
        inputs={k: batch[k] for k in MODEL_KEYS},
    )


def make_forecaster(config: ml_collections.ConfigDict, apply=None):
    """`forecast(params, records) -> deltas [N, T, H, W, 4]` (normalised units) for up to
    `batch_size` records, padded to `batch_size` with copies of the first so one compilation of
    the model serves every call. `apply(params, batch)`: default the Python network."""
    if apply is None:
        model = model_lib.make_model(config)
        apply = jax.jit(lambda p, b: model.apply({"params": p}, b))

    def forecast(params, records: list[dict[str, np.ndarray]], batch_size: int) -> np.ndarray:
        padded = records + [records[0]] * (batch_size - len(records))
        batch = {k: np.stack([r[k] for r in padded]) for k in MODEL_KEYS}
        return np.asarray(jax.device_get(apply(params, batch)))[: len(records)]

    return forecast


def write_cube(
    out: str, tile: str, path: str, inputs, where, delta, norm, config, plot: bool, step: int
) -> tuple[list[str], dict[str, int]]:
    """The official-layout prediction (and its PNG) of one cube; (files, clip counts)."""
    name = os.path.splitext(os.path.basename(path))[0]
    refl = norm.unbands(inputs["bap"][None] + delta)  # [T, H, W, 4]
    ndvi = evaluate.ndvi(refl)
    bands = {b: refl[..., i] for i, b in enumerate(config.data.bands)}
    nc_path = os.path.join(out, tile, f"{name}.nc")
    counts = evaluate.write_prediction(
        nc_path, ndvi, where["times"], where["lat"], where["lon"], bands, engine=config.data.engine
    )
    written = [nc_path]
    if plot:
        png_path = os.path.join(out, tile, f"{name}.png")
        plots.forecast_strips(
            norm.unbands(inputs["bap"]),
            where["last_context_date"],
            np.clip(refl, 0.0, 1.0),
            np.clip(ndvi, -1.0, 1.0),
            where["times"],
            png_path,
            f"{tile}/{name}: forecast of model step {step}",
        )
        written.append(png_path)
    return written, counts


def predict(
    model: str,
    inputs: str,
    out: str,
    config: ml_collections.ConfigDict | None = None,
    batch_size: str | int = 0,
    normalisation: str = "",
    plots: str | bool = True,
    engine: str = "python",
) -> list[str]:
    """Forecasts of every cube of `inputs` into `out` (see the module docstring); returns the
    files written. `batch_size` cubes per compiled call (0: config.eval.global_batch_size).
    `engine`: python (the default: the model's code), stablehlo (the bundle's StableHLO predict,
    without the model's code, at its batch size) or auto (stablehlo when the bundle has one)."""
    begin = time.perf_counter()
    apply = None
    if portable.use_artefact(model, engine):
        config, info = portable.bundle_config(model, "jaxlab.vegetation")
        hlo, params, batch_size = portable.load_callable(model), None, portable.input_batch(model)
        apply = lambda _, batch: hlo(batch)["deltas"]  # noqa: E731
    else:
        config, params, info = bundle_lib.load_model(model, config, task="jaxlab.vegetation")
    batch_size = bundle_lib.positive_int_option(
        "batch_size", batch_size or config.eval.global_batch_size
    )
    plot = _flag("plots", plots)
    norm, norm_from = find_normalisation(model, config, normalisation)
    logging.info("Normalisation: %s", norm_from)
    cubes = list_inputs(inputs)
    forecast = make_forecaster(config, apply)
    written, clipped, pending = [], [], []

    def flush():
        deltas = forecast(params, [record for _, _, record, _ in pending], batch_size)
        for (tile, path, record, where), delta in zip(pending, deltas, strict=True):
            files, counts = write_cube(
                out, tile, path, record, where, delta, norm, config, plot, info["checkpoint_step"]
            )
            written.extend(files)
            clipped.append(counts)
        pending.clear()

    for tile, path in loop.progress_bar(cubes, desc="vegetation predict"):
        pending.append((tile, path, *read_cube(path, config, norm)))
        if len(pending) == batch_size:
            flush()
    if pending:
        flush()
    _log_summary(cubes, clipped, info, model, out, time.perf_counter() - begin)
    return written


def _log_summary(cubes, clipped, info, model, out, seconds) -> None:
    for kind in ("ndvi", "reflectance"):
        logging.info(
            "Clipped %d of %d %s values to the physical range in the written files.",
            sum(c[kind] for c in clipped),
            sum(c[f"{kind}_values"] for c in clipped),
            kind,
        )
    logging.info(
        "Predicted %d cubes with step %d of %s -> %s (%.1f s, %.2f cubes/s)",
        len(cubes),
        info["checkpoint_step"],
        model,
        out,
        seconds,
        len(cubes) / max(seconds, 1e-9),
    )


# ----------------------------------------------------------------------------- demo input


def context_only(ds: xr.Dataset, context_days: int) -> xr.Dataset:
    """A full cube cut to what a forecast has: every non-weather variable on `time` is NaN after
    the first `context_days` days (no target frame survives); E-OBS and static maps are kept."""
    out = ds.copy()
    after = np.arange(ds.sizes["time"]) >= context_days
    for name, var in ds.data_vars.items():
        if "time" in var.dims and not name.startswith("eobs_"):
            masked = var.where(xr.DataArray(~after, dims=("time",)))  # float: NaN after
            out[name] = masked.astype(var.dtype) if var.dtype.kind == "f" else masked
    return out


def demo_input(config: ml_collections.ConfigDict, workdir: str) -> str:
    """`<workdir>/predict_input/<eval split>/<tile>/<cube>.nc`: the held-out synthetic cubes of
    `config.eval.split`, cut to context-only (`context_only`); returns that track folder."""
    root = data.prepare(config, workdir)
    out = os.path.join(workdir, DEMO_INPUT_DIR, config.eval.split)
    for path in data.list_cubes(root, config.eval.split):
        tile, name = data.region_and_name(path)
        target = os.path.join(out, tile, name)
        os.makedirs(os.path.dirname(target), exist_ok=True)
        with xr.open_dataset(path, engine=config.data.engine) as ds:
            cut = context_only(ds.load(), data.context_days(config))
        encoding = {v: {"zlib": True, "complevel": 1} for v in cut.data_vars}
        cut.to_netcdf(target, engine=config.data.engine, encoding=encoding)
    return out
