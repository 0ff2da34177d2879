"""HRRR ensemble forecasts from one initialisation time, as CF-1.10 NetCDF plus PNG folders.

    jaxlab predict --model=runs/weather/bundle --input=<GRIB2 file(s) or hrrr.zarr> --out=DIR \
        [members=N] [leads=L] [init_time=2024-06-03T18] [thresholds=refc:35,cape:1000] \
        [stats=PATH] [plots=true|false] [sample_members=K]

`model` is a training workdir or an exported bundle (`jaxlab export`); both give bitwise the same
files. `input` is one `*.grib2` file, several (comma-separated), a folder of them, or a Zarr store
written by `scripts/prepare_weather.py`. The initialisation time is `init_time`, else the latest
valid time among the inputs; only its file and, when present, the file valid one hour earlier are
decoded (no Zarr preparation of an archive). The network conditions on the state at t; the t-1 h
state, when given, is checked (same grid, one hour earlier) and its 1-h change is plotted in
`01_current_state`. `members` (default `eval.num_members`) members roll out `leads` (default
`eval.rollout_steps`) steps of `data.leads[0]` hours with the evaluation's sampler; member m's
noise is the named stream "predict" folded with the initialisation hour, then m, then the lead.

Output in `out`:
  - `hrrr_ensemble_<init YYYYMMDDTHH>Z.nc`: CF-1.10, dims `realization`, `time` (valid times),
    `y`, `x`; `forecast_reference_time`, `forecast_period`; projection `x` / `y` (m) with the
    `lambert_conformal_conic` grid mapping read from the GRIB2 (LaD, LoV, Latin1/2, earth radius);
    2-D `latitude` / `longitude`; per variable the members, `<var>_mean`, `<var>_spread`
    (`cell_methods` realization: mean / standard_deviation), `standard_name` and units; exceedance
    probabilities `probability_of_<var>_ge_<thr>` (units 1, with the threshold as a coordinate);
    zlib compression.
  - `01_current_state` ... `05_sample_members`: PNGs with init time, valid time and lead in every
    title.

Inference state: the EMA parameters and the residual scale ({"std", "mean"} [C]) are what
`steps.inference_params` returns and what an exported bundle holds (from a workdir they are
restored from its checkpoint). The normalisation statistics (`hrrr.zarr.stats.json`, shipped in
bundles by `steps.bundle_files`) are found in this order: `stats=PATH`; `<model>/`; the store of
the model's workdir (`data.dir`, or `<workdir>/data` for synthetic data); the store of a bundle's
`source_workdir`.

Option `engine=stablehlo` (or `auto`: when the bundle carries one) runs the bundle's StableHLO
predict (`network`: one lead step of the ensemble, the whole fixed-step sampler loop, with the
members' keys an input) in place of the model's code; given the same keys it equals the Python
path to float32 rounding. The default, `engine=python`, keeps bundle and workdir predictions
bitwise equal.
"""

from __future__ import annotations

import functools
import glob
import json
import math
import os
import shutil
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import xarray as xr
from absl import logging

from jaxlab.core import bundle as bundle_lib
from jaxlab.core import mesh as mesh_lib
from jaxlab.core import portable, rng
from jaxlab.weather import data, data_grib, diffusion, ensemble
from jaxlab.weather import model as model_lib
from jaxlab.weather import predict_output as output

TASK = "jaxlab.weather"
DEMO_INPUT_DIR = "predict_input"


def load_forecaster(model: str, config=None):
    """(config, EMA params, scale {"std", "mean"} [C], info) from a bundle or a workdir."""
    config, params, info = bundle_lib.load_model(model, config, task=TASK)
    return config, params["ema"], params["scale"], info


def find_stats(model: str, config, info: dict, given: str = "") -> tuple[dict, str]:
    """The training normalisation statistics and where they were read (order: module doc)."""
    candidates = [given] if given else []
    candidates.append(os.path.join(model, data.STATS_FILE))
    candidates.append(data.stats_path(data.store_path(config, model)))
    if info.get("source_workdir"):
        candidates.append(data.stats_path(data.store_path(config, info["source_workdir"])))
    for path in candidates:
        if os.path.isfile(path):
            with open(path) as f:
                return json.load(f), path
        if path == given:
            raise FileNotFoundError(f"stats={given}: no such statistics file.")
    raise FileNotFoundError(
        f"No normalisation statistics ({data.STATS_FILE}) for {model}; looked in {candidates}. "
        "Pass stats=<the training store's .stats.json>."
    )


def _parse_time(value: str, name: str = "init_time") -> np.datetime64:
    try:
        return np.datetime64(str(value).replace("Z", ""), "ns")
    except ValueError as e:
        raise ValueError(f"{name}={value!r}: expected an ISO time such as 2024-06-03T18.") from e


def _grib_inputs(inputs: str) -> list[str]:
    paths = []
    for part in filter(None, (p.strip() for p in inputs.split(","))):
        if os.path.isdir(part):
            found = data.grib_paths(part)
            if not found:
                raise FileNotFoundError(f"{part}: no *.grib2 files in this folder.")
            paths += found
        elif os.path.isfile(part):
            paths.append(part)
        else:
            raise FileNotFoundError(f"{part}: no such GRIB2 file or folder.")
    return paths


def read_initial_states(inputs: str, init_time: str = "") -> dict[str, Any]:
    """{"time", "state" [y, x, C], "previous" [y, x, C] or None, "grid", "latitude", "longitude",
    "sources"} at the initialisation time, physical units, from GRIB2 file(s) or a Zarr store."""
    if inputs.rstrip("/").endswith(".zarr"):
        return _from_store(inputs.rstrip("/"), init_time)
    headers = [data_grib.scan_grib(p) for p in _grib_inputs(inputs)]
    by_time: dict[Any, list] = {}
    for h in headers:
        by_time.setdefault(h["time"], []).append(h["path"])
    for t, paths in by_time.items():
        if len(paths) > 1:
            raise ValueError(f"valid time {t} is in {len(paths)} input files: {paths}.")
    t = _parse_time(init_time) if init_time else max(by_time)
    if t not in by_time:
        raise ValueError(f"init_time {t}: no input file is valid then; found {sorted(by_time)}.")
    header = next(h for h in headers if h["time"] == t)
    record = data.read_grib(header["path"], coords=True, header=header)
    out = {
        "time": t,
        "state": np.stack([record[n] for n in data.VARIABLES], -1),
        "previous": None,
        "grid": header["grid"],
        "latitude": record["latitude"],
        "longitude": record["longitude"],
        "sources": [header["path"]],
    }
    before = t - np.timedelta64(1, "h")
    if before in by_time:
        prev_header = next(h for h in headers if h["time"] == before)
        if prev_header["grid"] != header["grid"]:
            raise ValueError(
                f"{prev_header['path']}: on another grid than the initial file {header['path']}."
            )
        prev = data.read_grib(prev_header["path"], coords=False, header=prev_header)
        out["previous"] = np.stack([prev[n] for n in data.VARIABLES], -1)
        out["sources"].append(prev_header["path"])
    elif len(headers) > 1:
        logging.warning("No input file is valid at %s (t - 1 h): no 1-h change figures.", before)
    return out


def _from_store(store: str, init_time: str) -> dict[str, Any]:
    if not os.path.isdir(store):
        raise FileNotFoundError(f"{store}: no such Zarr store.")
    ds = xr.open_zarr(store, chunks=None, consolidated=False)
    if "grid" not in ds.attrs:
        raise ValueError(
            f"{store}: attribute 'grid' (the GRIB2 grid keys) missing; re-run "
            "scripts/prepare_weather.py with this version to write it."
        )
    times = ds["time"].values
    t = _parse_time(init_time) if init_time else times[-1]
    index = {v: i for i, v in enumerate(times)}
    if t not in index:
        raise ValueError(f"{store}: init_time {t} not in the store ({times[0]} .. {times[-1]}).")

    def state(i):
        return np.stack([ds[n].values[i] for n in data.VARIABLES], -1)

    before = t - np.timedelta64(1, "h")
    return {
        "time": t,
        "state": state(index[t]),
        "previous": state(index[before]) if before in index else None,
        "grid": ds.attrs["grid"],
        "latitude": ds["latitude"].values,
        "longitude": ds["longitude"].values,
        "sources": [f"{store}@{t}"],
    }


_STEP_FNS: dict = {}


def _step_fn(config, members: int):
    """`ensemble.make_forecast_step` on as many devices as divide `members` evenly (members are
    sharded, never replicated), compiled once per (config, members) in a process."""
    key = (config.to_json_best_effort(), members)
    if key not in _STEP_FNS:
        devices = jax.devices()[: math.gcd(members, jax.device_count())]
        mesh = mesh_lib.make_mesh([("data", -1)], devices=devices)
        model = model_lib.make_model(config)
        sched = diffusion.make_schedule(config.diffusion.schedule, config.diffusion.num_steps)
        _STEP_FNS[key] = ensemble.make_forecast_step(model, sched, config, mesh, members)
    return _STEP_FNS[key]


def forecast(
    config, params, scale, normaliser, state, init_time, members: int, leads: int, step_fn=None
):
    """Ensemble [L, M, y, x, C] in physical units from the physical state [y, x, C] at
    `init_time`: `ensemble.rollout`, as the evaluation draws it, with the case key
    stream(seed, "predict", hours since 1970 of `init_time`). `step_fn` (default `_step_fn`, the
    model's code) is the rollout's one-lead step, e.g. `artefact_step`."""
    hours = (np.datetime64(init_time, "h") - np.datetime64("1970-01-01T00", "h")).astype(int)
    case_key = rng.stream(config.seed, "predict", int(hours))
    init = jnp.asarray(normaliser.encode(state))
    hour = float(data.hour_of_day(init_time))
    ens = ensemble.rollout(
        step_fn or _step_fn(config, members),
        params,
        init,
        float(config.data.leads[0]),
        hour,
        case_key,
        members,
        leads,
        scale,
    )
    return normaliser.decode(np.asarray(jax.device_get(ens)))


def network(config, members: int | None = None) -> portable.Network:
    """The predict network: one lead step of `members` (default `eval.num_members`) ensemble
    members on the full grid, the whole fixed-step sampler loop (`config.diffusion`: DPM-Solver++,
    DDIM or DDPM) and the residual decoding in one function (`ensemble.forecast_step`),
        {"cond" [M, H, W, C] normalised state at t, "lead" [M] hours, "hour" [M] hour of day of
         t, "keys" [M, 2] uint32: each member's key as `jax.random.key_data` (threefry2x32)}
        -> {"state": [M, H, W, C] normalised state at t + lead},
    with the bundle's EMA parameters and residual scale. The keys are the only randomness (the
    sampler's prior and per-step noise are drawn from them inside), so the artefact is
    deterministic and equals the Python step given the same keys; predict calls it once per lead
    with `ensemble.member_keys`. What a bundle exports as its StableHLO predict."""
    model = model_lib.make_model(config)
    sched = diffusion.make_schedule(config.diffusion.schedule, config.diffusion.num_steps)
    m = members or config.eval.num_members
    key_shape = jax.eval_shape(lambda: jax.random.key_data(jax.random.key(0))).shape
    vector = jax.ShapeDtypeStruct((m,), np.float32)
    inputs = {
        "cond": jax.ShapeDtypeStruct((m, *config.data.shape, len(data.VARIABLES)), np.float32),
        "lead": vector,
        "hour": vector,
        "keys": jax.ShapeDtypeStruct((m, *key_shape), np.uint32),
    }
    step = functools.partial(ensemble.forecast_step, model=model, sched=sched, config=config)

    def fn(params, x):
        keys = jax.random.wrap_key_data(x["keys"])
        state = step(params["ema"], x["cond"], x["lead"], x["hour"], keys, params["scale"])
        return {"state": state}

    return portable.Network(fn=fn, inputs=inputs)


def artefact_step(model: str):
    """`ensemble.rollout`'s step function (params, state [M, ...], lead, hour, keys, scale) ->
    next state, running the bundle's StableHLO predict (params and scale are its own): members
    in blocks of the artefact's size, the last padded with the last member and the padding
    dropped; a member's result does not depend on the others."""
    apply, block = portable.load_callable(model), portable.input_batch(model)

    def step(params, state, lead, hour, keys, scale):
        del params, scale  # the artefact's own, from the bundle
        key_data = np.asarray(jax.random.key_data(keys))
        members, out = len(key_data), []
        for start in range(0, members, block):
            rows = np.minimum(np.arange(start, start + block), members - 1)
            inputs = {"cond": state[rows], "lead": lead[rows], "hour": hour[rows]}
            got = apply({**inputs, "keys": key_data[rows]})["state"]
            out.append(got[: min(block, members - start)])
        return jnp.concatenate(out)

    return step


def clip_to_physical_range(members: np.ndarray) -> tuple[np.ndarray, dict[str, int]]:
    """Members [..., C] clipped to `data.VALID_RANGE` per variable (a young or extrapolating
    model can leave it: e.g. REFC below -40 dBZ); the counts are logged and written."""
    out, clipped = members.copy(), {}
    for c, name in enumerate(data.VARIABLES):
        lo, hi = data.VALID_RANGE[name]
        field = out[..., c]
        clipped[name] = int(((field < lo) | (field > hi)).sum())
        np.clip(field, lo, hi, out=field)
    if any(clipped.values()):
        logging.warning(
            "predict: values outside the physical ranges clipped (per variable, of %d): %s",
            members[..., 0].size,
            {k: v for k, v in clipped.items() if v},
        )
    return out, clipped


def _positive_int(name: str, value) -> int:
    try:
        number = int(value)
    except (TypeError, ValueError):
        number = 0
    if number < 1:
        raise ValueError(f"predict option {name}={value!r}: expected a positive integer.")
    return number


def _thresholds(value, config) -> list[tuple[str, float]]:
    if value in (None, ""):
        return [(name, float(v)) for name, v in config.eval.thresholds]
    out = []
    for part in str(value).split(","):
        name, _, number = part.partition(":")
        if name.strip() not in data.VARIABLES:
            raise ValueError(f"thresholds={value!r}: {name!r} is not one of {data.VARIABLES}.")
        try:
            out.append((name.strip(), float(number)))
        except ValueError as e:
            raise ValueError(f"thresholds={value!r}: expected NAME:VALUE,NAME:VALUE.") from e
    return out


def _bool(name: str, value) -> bool:
    text = str(value).lower()
    if text not in ("true", "false", "1", "0", "yes", "no"):
        raise ValueError(f"predict option {name}={value!r}: expected true or false.")
    return text in ("true", "1", "yes")


def predict(
    model: str,
    inputs: str,
    out: str,
    config=None,
    members=None,
    leads=None,
    init_time: str = "",
    thresholds: str = "",
    stats: str = "",
    plots="true",
    sample_members=None,
    engine: str = "python",
) -> list[str]:
    """Writes the NetCDF and the PNG folders for one initialisation time; returns the files.

    `engine` (`core.portable.use_artefact`): python (default) runs the sampler's code; stablehlo
    its exported lead step (one key per member, so deterministic); auto, stablehlo if present."""
    hlo = portable.use_artefact(model, engine)
    if hlo:
        config, info = portable.bundle_config(model, TASK)
        params = scale = None
        step_fn = artefact_step(model)
    else:
        config, params, scale, info = load_forecaster(model, config)
        step_fn = None
    ec = config.eval
    members = _positive_int("members", members or ec.num_members)
    leads = _positive_int("leads", leads or ec.rollout_steps)
    sample = _positive_int("sample_members", sample_members or ec.sample_members_plotted)
    events = _thresholds(thresholds, config)
    statistics, stats_file = find_stats(model, config, info, stats)
    init = read_initial_states(inputs, init_time)
    shape = tuple(int(v) for v in config.data.shape)
    if init["state"].shape[:2] != shape:
        raise ValueError(
            f"{init['sources'][0]}: grid (y, x) = {init['state'].shape[:2]}; the model was "
            f"trained on config.data.shape = {shape}."
        )
    normaliser = data.Normaliser(statistics)
    start = time.perf_counter()
    members_phys = forecast(
        config, params, scale, normaliser, init["state"], init["time"], members, leads, step_fn
    )
    seconds = time.perf_counter() - start
    members_phys, clipped = clip_to_physical_range(members_phys)
    os.makedirs(out, exist_ok=True)
    lead_hours = int(config.data.leads[0]) * np.arange(1, leads + 1)
    ds = output.dataset(init, members_phys, lead_hours, events, info, stats_file, clipped)
    nc = os.path.join(out, f"hrrr_ensemble_{output.stamp(init['time'])}Z.nc")
    output.write_netcdf(ds, nc)
    written = [nc]
    if _bool("plots", plots):
        written += output.figures(out, ds, init, sample)
    mean_refc = float(ds["refc_mean"].max())
    logging.info(
        "weather predict: init %s, %d members x %d leads (%s h) in %.1f s (%s) -> %s (+%d "
        "PNGs); max ensemble-mean REFC %.1f dBZ; model step %s, stats %s",
        init["time"],
        members,
        leads,
        ",".join(str(h) for h in lead_hours),
        seconds,
        "StableHLO" if hlo else "Python",
        nc,
        len(written) - 1,
        mean_refc,
        info.get("checkpoint_step"),
        stats_file,
    )
    return written


def demo_input(config, workdir: str) -> str:
    """`workdir/predict_input/`: the GRIB2 files of a held-out time t and of t - 1 h (no later
    hours), copied from the synthetic archive; for real data, the store (predict uses its last
    time)."""
    store = data.prepare(config, workdir)
    if not config.data.synthetic:
        return store
    with open(data.stats_path(store)) as f:
        num_train = int(json.load(f)["num_train_times"])
    times = xr.open_zarr(store, chunks=None, consolidated=False)["time"].values
    held_out = times[num_train + 1 :]
    if not len(held_out):
        raise ValueError(f"{store}: no held-out time after the training period.")
    t = held_out[len(held_out) // 2]
    wanted = {t, t - np.timedelta64(1, "h")}
    out = os.path.join(workdir, DEMO_INPUT_DIR)
    if os.path.isdir(out):
        shutil.rmtree(out)
    os.makedirs(out)
    grib_dir = os.path.join(data.data_dir(config, workdir), "grib")
    for path in sorted(glob.glob(os.path.join(grib_dir, "**", "*.grib2"), recursive=True)):
        if data.scan_grib(path)["time"] in wanted:
            shutil.copyfile(path, os.path.join(out, os.path.basename(path)))
    return out
