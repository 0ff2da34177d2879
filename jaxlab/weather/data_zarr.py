"""GRIB2 archive -> Zarr store in bounded memory: one time step at a time, one-pass statistics.

`prepare_zarr(paths, store)`:
1. scans every file's headers (no values): valid time from the content, the seven fields by their
   codes, the grid. A file lacking a field is skipped and recorded (`missing="skip"`) or stops the
   run (`"fail"`); a file on another grid than the first stops the run, naming both grids.
2. duplicated valid times: `on_duplicate="error"` (default) names the files; `"drop_later"` keeps
   the analysis (smallest forecast step, then the first path) and logs and records the rest.
   Hours missing between the first and last time are logged and recorded (`missing_hours` in
   the statistics; `PairSource` logs the pairs they cost); `on_gap="error"` stops instead.
3. pre-allocates the store (variables [time, y, x] float32, one time step per chunk), then
   decodes the files one at a time (or `workers` at a time in a process pool, at most
   2 x workers in flight) and writes each time step with its per-variable moments
   (count, mean, M2 of the transformed field, float64) and a `written` flag. Peak memory is a few
   time steps, whatever the number of files.
4. merges the moments of the training times (Chan et al.'s pairwise update: exact in float64)
   into `<store>.stats.json`, written last: its presence marks a complete store.
A crash leaves the `written` flags: rerunning with the same files skips the written time steps.
"""

from __future__ import annotations

import collections
import concurrent.futures
import json
import multiprocessing
import os
import time as time_lib
from typing import Any

import numpy as np
import zarr
from absl import logging

from jaxlab.core import loop
from jaxlab.weather import data_grib
from jaxlab.weather.data_grib import UNITS, VARIABLES

# Skewed fields are transformed before standardising (documented in README): CAPE >= 0 and
# -CIN >= 0 are long-tailed, log1p makes them near-Gaussian and keeps 0 at 0.
TRANSFORMS = {"cape": "log1p", "cin": "neglog1p"}
# Floors for the std (transformed units), so a training period without echo (REFC constant at
# -10 dBZ) does not make every later echo hundreds of stds large.
MIN_STD = {"refc": 1.0, "t2m": 0.1, "d2m": 0.1, "u10": 0.1, "v10": 0.1, "cape": 0.1, "cin": 0.1}
HOUR = np.timedelta64(1, "h")
TIME_UNITS = "hours since 1970-01-01 00:00:00"


def forward_transform(name: str, x: np.ndarray) -> np.ndarray:
    kind = TRANSFORMS.get(name)
    if kind == "log1p":
        return np.log1p(np.maximum(x, 0.0))
    if kind == "neglog1p":
        return np.log1p(np.maximum(-x, 0.0))
    return x


def stats_path(store: str) -> str:
    return os.path.join(
        os.path.dirname(os.path.abspath(store)), os.path.basename(store.rstrip("/")) + ".stats.json"
    )


def moments(record: dict[str, Any]) -> np.ndarray:
    """[C, 3] (count, mean, M2) of each transformed field of one time step, float64 two-pass."""
    out = np.zeros((len(VARIABLES), 3))
    for c, name in enumerate(VARIABLES):
        x = forward_transform(name, record[name].astype(np.float64))
        mean = x.mean()
        out[c] = (x.size, mean, np.square(x - mean).sum())
    return out


def merge_moments(parts: np.ndarray) -> np.ndarray:
    """[T, C, 3] per-step moments -> [C, 3] of all steps together (Chan et al. 1979)."""
    total = parts[0].copy()
    for p in parts[1:]:
        n = total[:, 0] + p[:, 0]
        delta = p[:, 1] - total[:, 1]
        total[:, 2] += p[:, 2] + delta**2 * total[:, 0] * p[:, 0] / n
        total[:, 1] += delta * p[:, 0] / n
        total[:, 0] = n
    return total


def scan_archive(
    paths: list[str], missing: str = "skip", on_duplicate: str = "error", on_gap: str = "warn"
) -> dict[str, Any]:
    """Headers of every file -> {"headers" (one per time, sorted), "skipped", "dropped",
    "missing_hours"}, after the checks and policies of steps 1-2 of the module docstring."""
    for key, value, allowed in (
        ("missing", missing, ("skip", "fail")),
        ("on_duplicate", on_duplicate, ("error", "drop_later")),
        ("on_gap", on_gap, ("warn", "error")),
    ):
        if value not in allowed:
            raise ValueError(f"data.{key} must be one of {allowed}, got {value!r}.")
    if not paths:
        raise FileNotFoundError("No GRIB2 files given.")
    headers, skipped = [], []
    for path in loop.progress_bar(sorted(paths), desc="scan GRIB2 headers"):
        try:
            headers.append(data_grib.scan_grib(path))
        except data_grib.MissingFieldError as e:
            if missing == "fail":
                raise
            logging.warning("Skipping (data.missing='skip'): %s", e)
            skipped.append(path)
    if not headers:
        raise ValueError(f"None of the {len(paths)} GRIB2 files had all seven fields.")
    grid = headers[0]["grid"]
    for h in headers[1:]:
        if h["grid"] != grid:
            diff = {k: (grid[k], h["grid"][k]) for k in grid if h["grid"][k] != grid[k]}
            raise data_grib.GribError(
                f"{h['path']}: grid differs from {headers[0]['path']} (first, this): {diff}; "
                "one store holds one grid."
            )
    by_time = collections.defaultdict(list)
    for h in headers:
        by_time[h["time"]].append(h)
    kept, dropped = [], []
    for t in sorted(by_time):
        group = sorted(by_time[t], key=lambda h: (h["step_hours"], h["path"]))
        if len(group) > 1 and on_duplicate == "error":
            raise ValueError(
                f"valid time {t} is in {len(group)} files: {[h['path'] for h in group]}; set "
                "data.on_duplicate='drop_later' to keep the first (smallest forecast hour)."
            )
        kept.append(group[0])
        dropped += [h["path"] for h in group[1:]]
    if dropped:
        logging.warning(
            "data.on_duplicate='drop_later': dropped %d files whose valid time another file "
            "has: %s",
            len(dropped),
            dropped[:10],
        )
    times = np.array([h["time"] for h in kept])
    expected = np.arange(times[0], times[-1] + HOUR, HOUR)
    missing_hours = [str(t) for t in np.setdiff1d(expected, times)]
    if missing_hours:
        message = (
            f"{len(missing_hours)} hours missing between {times[0]} and {times[-1]}: "
            f"{missing_hours[:10]}{' ...' if len(missing_hours) > 10 else ''}"
        )
        if on_gap == "error":
            raise ValueError(f"{message} (data.on_gap='error').")
        logging.warning("%s; pairs needing them are left out (data.on_gap='warn').", message)
    return {
        "headers": kept,
        "skipped": skipped,
        "dropped": dropped,
        "missing_hours": missing_hours,
    }


def _hours(times: np.ndarray) -> np.ndarray:
    return ((times - np.datetime64("1970-01-01T00", "ns")) // HOUR).astype(np.int64)


def _open_or_create(store: str, headers: list[dict], attrs: dict):
    """The store's zarr group: resumed when it holds exactly these times and grid, else new
    (latitude / longitude decoded from the first file)."""
    hours = _hours(np.array([h["time"] for h in headers]))
    grid = headers[0]["grid"]
    if os.path.exists(store):
        try:
            group = zarr.open_group(store, mode="r+")
            same = (
                group.attrs.get("grid") == grid
                and "written" in group
                and np.array_equal(group["time"][:], hours)
            )
        except (FileNotFoundError, ValueError, KeyError):
            same = False
        if not same:
            raise ValueError(
                f"{store} exists but holds other times or another grid than these "
                f"{len(headers)} files; delete it (or choose another --store) to rebuild it."
            )
        logging.info(
            "Resuming %s: %d of %d time steps written.",
            store,
            int(group["written"][:].sum()),
            len(headers),
        )
        return group
    ny, nx = int(grid["Ny"]), int(grid["Nx"])
    first = data_grib.read_grib(headers[0]["path"], coords=True, header=headers[0])
    group = zarr.open_group(store, mode="w", zarr_format=3)
    group.attrs.update({**attrs, "grid": grid})

    def array(name, shape, chunks, dtype, dims, fill, **attributes):
        return group.create_array(
            name,
            shape=shape,
            chunks=chunks,
            dtype=dtype,
            fill_value=fill,
            dimension_names=dims,
            attributes=attributes,
        )

    t = len(headers)
    time = array("time", (t,), (t,), "int64", ("time",), 0, units=TIME_UNITS)
    time.attrs["calendar"] = "proleptic_gregorian"
    time[:] = hours
    for name, units in (("latitude", "degrees_north"), ("longitude", "degrees_east")):
        array(name, (ny, nx), (ny, nx), "float32", ("y", "x"), np.nan, units=units)[:] = first[name]
    for name in VARIABLES:
        array(
            name,
            (t, ny, nx),
            (1, ny, nx),
            "float32",
            ("time", "y", "x"),
            np.nan,
            units=UNITS[name],
            coordinates="latitude longitude",
        )
    array("moments", (t, len(VARIABLES), 3), (1, len(VARIABLES), 3), "float64",
          ("time", "variable", "moment"), 0.0)  # fmt: skip
    array("written", (t,), (t,), "int8", ("time",), 0)
    return group


def _decode(path: str, header: dict) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Worker: the seven fields of one file and their moments (runs in a pool process)."""
    record = data_grib.read_grib(path, coords=False, header=header)
    return {name: record[name] for name in VARIABLES}, moments(record)


def _decoded(todo: list[tuple[int, dict]], workers: int):
    """Yields (t, fields, moments) in order; with workers > 1, at most 2 x workers in flight."""
    if workers <= 1:
        for t, h in todo:
            yield (t, *_decode(h["path"], h))
        return
    context = multiprocessing.get_context("spawn")  # no fork of a process holding JAX threads
    with concurrent.futures.ProcessPoolExecutor(workers, mp_context=context) as pool:
        pending: collections.deque = collections.deque()
        items = iter(todo)
        for t, h in items:
            pending.append((t, pool.submit(_decode, h["path"], h)))
            if len(pending) >= 2 * workers:
                t0, future = pending.popleft()
                yield (t0, *future.result())
        while pending:
            t0, future = pending.popleft()
            yield (t0, *future.result())


def prepare_zarr(
    paths: list[str],
    store: str,
    *,
    train_fraction: float = 0.75,
    missing: str = "skip",
    on_duplicate: str = "error",
    on_gap: str = "warn",
    workers: int = 0,
) -> dict[str, Any]:
    """GRIB2 files -> Zarr store (time-sorted) + `<store>.stats.json`; returns the statistics."""
    scan = scan_archive(paths, missing, on_duplicate, on_gap)
    headers = scan["headers"]
    os.makedirs(os.path.dirname(os.path.abspath(store)), exist_ok=True)
    if os.path.exists(stats_path(store)):
        os.remove(stats_path(store))  # the store is incomplete until the statistics are rewritten
    attrs = {"source": "HRRR GRIB2 via ecCodes", "skipped_files": scan["skipped"]}
    group = _open_or_create(store, headers, attrs)
    written = group["written"][:]
    todo = [(t, h) for t, h in enumerate(headers) if not written[t]]
    start = time_lib.perf_counter()
    arrays = {name: group[name] for name in VARIABLES}
    for t, fields, step_moments in loop.progress_bar(
        _decoded(todo, workers), total=len(todo), desc=f"prepare {os.path.basename(store)}"
    ):
        for name in VARIABLES:
            arrays[name][t] = fields[name]
        group["moments"][t] = step_moments
        group["written"][t] = 1  # after the data: a crash before this redoes the step
    seconds = time_lib.perf_counter() - start
    num_train = max(1, int(round(train_fraction * len(headers))))
    total = merge_moments(group["moments"][:num_train])
    stats: dict[str, Any] = {"variables": {}}
    for c, name in enumerate(VARIABLES):
        count, mean, m2 = total[c]
        stats["variables"][name] = {
            "transform": TRANSFORMS.get(name, "none"),
            "mean": float(mean),
            "std": max(float(np.sqrt(m2 / count)), MIN_STD[name]),
            "units": UNITS[name],
        }
    stats.update(
        train_end=str(headers[num_train - 1]["time"]),
        num_train_times=num_train,
        num_times=len(headers),
        skipped_files=scan["skipped"],
        dropped_duplicates=scan["dropped"],
        missing_hours=scan["missing_hours"],
        grid=headers[0]["grid"],
    )
    tmp = f"{stats_path(store)}.{os.getpid()}.tmp"
    with open(tmp, "w") as f:
        json.dump(stats, f, indent=2)
    os.replace(tmp, stats_path(store))
    logging.info(
        "Wrote %s: %d times (%d for training, %d decoded now at %.2f files/s), %d skipped, "
        "%d duplicates dropped, %d hours missing.",
        store,
        len(headers),
        num_train,
        len(todo),
        len(todo) / max(seconds, 1e-9),
        len(scan["skipped"]),
        len(scan["dropped"]),
        len(scan["missing_hours"]),
    )
    return stats
