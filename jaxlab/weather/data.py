"""HRRR data: GRIB2 reader (xarray + cfgrib), GRIB2 -> Zarr, statistics, normaliser, grain source.

Reading (FORMATS.md, HRRR): one cfgrib open per level type, then the variable by its cfgrib short
name, checked against its GRIB2 code (paramId) where the short name is ambiguous:

    refc        typeOfLevel=atmosphere                  (0, 16, 196), NCEP local: needs centre 7
    t2m, d2m    typeOfLevel=heightAboveGround, level=2  (0, 0, 0), (0, 0, 6)
    u10, v10    typeOfLevel=heightAboveGround, level=10 (0, 2, 2), (0, 2, 3)
    cape, cin   typeOfLevel=surface                     (0, 7, 6), (0, 7, 7)

The pressure-layer CAPE/CIN (typeOfLevel pressureFromGroundLayer) are never opened. With ecCodes
2.50 the short names above resolve as listed (checked on files it wrote); if an ecCodes version
names one differently (e.g. REFC as `unknown` without the NCEP tables), `_pick` falls back to the
variable whose GRIB_paramId / discipline-category-number matches and logs that it did.

Store: Zarr, variables `refc t2m d2m u10 v10 cape cin` [time, y, x] float32, 2-D `latitude` /
`longitude`, one time step per chunk. `stats.json` beside it: per variable the transform and the
mean / std of the transformed field over the training period.
"""

from __future__ import annotations

import json
import os
import shutil
import time as time_lib
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import xarray as xr
from absl import logging
from jax.experimental import multihost_utils

from jaxlab.weather import synthetic

VARIABLES = ("refc", "t2m", "d2m", "u10", "v10", "cape", "cin")
UNITS = {
    "refc": "dBZ",
    "t2m": "K",
    "d2m": "K",
    "u10": "m s-1",
    "v10": "m s-1",
    "cape": "J kg-1",
    "cin": "J kg-1",
}
# (filter_by_keys, variables, GRIB2 (discipline, category, number) per variable).
LEVEL_GROUPS = (
    ({"typeOfLevel": "atmosphere"}, {"refc": (0, 16, 196)}),
    ({"typeOfLevel": "heightAboveGround", "level": 2}, {"t2m": (0, 0, 0), "d2m": (0, 0, 6)}),
    ({"typeOfLevel": "heightAboveGround", "level": 10}, {"u10": (0, 2, 2), "v10": (0, 2, 3)}),
    ({"typeOfLevel": "surface"}, {"cape": (0, 7, 6), "cin": (0, 7, 7)}),
)
# Plausible physical ranges; a value outside is reported (file, variable, range), not trained on.
VALID_RANGE = {
    "refc": (-40.0, 90.0),
    "t2m": (180.0, 340.0),
    "d2m": (150.0, 330.0),
    "u10": (-100.0, 100.0),
    "v10": (-100.0, 100.0),
    "cape": (0.0, 15000.0),
    "cin": (-5000.0, 10.0),
}
# Skewed fields are transformed before standardising (documented in README): CAPE >= 0 and
# -CIN >= 0 are long-tailed, log1p makes them near-Gaussian and keeps 0 at 0.
TRANSFORMS = {"cape": "log1p", "cin": "neglog1p"}
# Floors for the std (transformed units), so a training period without echo (REFC constant at
# -10 dBZ) does not make every later echo hundreds of stds large.
MIN_STD = {"refc": 1.0, "t2m": 0.1, "d2m": 0.1, "u10": 0.1, "v10": 0.1, "cape": 0.1, "cin": 0.1}


def prepare(config: ml_collections.ConfigDict, workdir: str) -> str:
    """The Zarr store path; writes synthetic GRIB2 files and converts them first if configured.

    The store is `<data.dir>/hrrr.zarr`; with `data.synthetic` an empty `data.dir` means
    `<workdir>/data`, real data needs `data.dir` set (scripts/prepare_weather.py writes it).
    """
    dc = config.data
    if not dc.synthetic and not dc.dir:
        raise ValueError(
            "config.data.dir is empty and config.data.synthetic is False: set data.dir to the "
            "folder holding hrrr.zarr and hrrr.zarr.stats.json (scripts/prepare_weather.py)."
        )
    data_dir = dc.dir or os.path.join(workdir, "data")
    store = os.path.join(data_dir, "hrrr.zarr")
    if dc.synthetic and jax.process_index() == 0:
        grib_dir = os.path.join(data_dir, "grib")
        paths = synthetic.write_dataset(
            grib_dir, shape=tuple(dc.shape), num_times=dc.num_times, dx_m=dc.dx_m, seed=config.seed
        )
        if not os.path.exists(store):
            prepare_zarr(paths, store, train_fraction=dc.train_fraction, missing=dc.missing)
    if jax.process_count() > 1:
        multihost_utils.sync_global_devices("weather_prepare")
    return store


class MissingFieldError(ValueError):
    """A GRIB2 file lacks one of the seven fields (the message names file and field)."""


def _pick(ds: xr.Dataset, name: str, code: tuple[int, int, int], path: str, keys: dict):
    if name in ds.data_vars:
        return ds[name]
    for var in ds.data_vars.values():
        a = var.attrs
        got = (
            a.get("GRIB_discipline"),
            a.get("GRIB_parameterCategory"),
            a.get("GRIB_parameterNumber"),
        )
        if got == code:
            logging.warning("%s: %s found as %r by its GRIB2 code %s.", path, name, var.name, code)
            return var
    raise MissingFieldError(
        f"{path}: field {name!r} (GRIB2 code {code}, {keys}) not found; the file has "
        f"{sorted(ds.data_vars)} at that level."
    )


def read_grib(path: str) -> dict[str, Any]:
    """One HRRR surface file -> {"time", "latitude", "longitude", and the 7 fields [y, x]}."""
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path}: no such GRIB2 file.")
    out: dict[str, Any] = {}
    for keys, variables in LEVEL_GROUPS:
        try:
            ds = xr.open_dataset(
                path,
                engine="cfgrib",
                backend_kwargs={"indexpath": "", "filter_by_keys": keys, "errors": "ignore"},
            )
        except Exception as e:  # cfgrib raises several types for unreadable files
            raise ValueError(f"{path}: cannot read GRIB2 messages {keys}: {e}") from e
        with ds:
            for name, code in variables.items():
                values = np.asarray(_pick(ds, name, code, path, keys).values, np.float32)
                if values.ndim != 2:
                    raise ValueError(f"{path}: {name} has shape {values.shape}; expected [y, x].")
                out[name] = values
            if "latitude" not in out and "latitude" in ds.coords:
                out["latitude"] = np.asarray(ds["latitude"].values, np.float32)
                out["longitude"] = np.asarray(ds["longitude"].values, np.float32)
                valid = ds["valid_time"].values if "valid_time" in ds.coords else ds["time"].values
                out["time"] = np.datetime64(valid, "ns")
    if "latitude" not in out:
        raise MissingFieldError(f"{path}: no 2-D latitude/longitude (is the grid Lambert?).")
    shapes = {k: out[k].shape for k in VARIABLES}
    if len(set(shapes.values())) != 1:
        raise ValueError(f"{path}: fields have different grids: {shapes}.")
    for name in VARIABLES:
        lo, hi = VALID_RANGE[name]
        bad = ~np.isfinite(out[name]) | (out[name] < lo) | (out[name] > hi)
        if bad.any():
            raise ValueError(
                f"{path}: {name} has {int(bad.sum())} values outside [{lo}, {hi}] {UNITS[name]} "
                f"or non-finite (e.g. {out[name][bad].ravel()[0]})."
            )
    return out


def prepare_zarr(
    paths: list[str], store: str, *, train_fraction: float = 0.75, missing: str = "skip"
) -> dict[str, Any]:
    """GRIB2 files -> Zarr store (time-sorted) + stats.json; returns the stats.

    Args:
      missing: "skip" logs and skips a file lacking a field; "fail" raises MissingFieldError.
    """
    if missing not in ("skip", "fail"):
        raise ValueError(f"missing must be 'skip' or 'fail', got {missing!r}.")
    if not paths:
        raise FileNotFoundError(f"No GRIB2 files given for {store}.")
    os.makedirs(os.path.dirname(os.path.abspath(store)), exist_ok=True)
    records, skipped = [], []
    start = time_lib.perf_counter()
    for i, path in enumerate(sorted(paths)):
        try:
            records.append(read_grib(path))
        except MissingFieldError as e:
            if missing == "fail":
                raise
            logging.warning("Skipping %s", e)
            skipped.append(path)
        elapsed = time_lib.perf_counter() - start
        eta = elapsed / (i + 1) * (len(paths) - i - 1)
        logging.log_every_n_seconds(
            logging.INFO,
            "prepare: %d/%d files [%s] %.1f files/s, ETA %.0fs",
            5,
            i + 1,
            len(paths),
            "#" * (20 * (i + 1) // len(paths)),
            (i + 1) / elapsed,
            eta,
        )
    if not records:
        raise ValueError(f"None of the {len(paths)} GRIB2 files had all seven fields.")
    records.sort(key=lambda r: r["time"])
    ds = xr.Dataset(
        {
            name: (("time", "y", "x"), np.stack([r[name] for r in records]), {"units": UNITS[name]})
            for name in VARIABLES
        },
        coords={
            "time": np.array([r["time"] for r in records]),
            "latitude": (("y", "x"), records[0]["latitude"], {"units": "degrees_north"}),
            "longitude": (("y", "x"), records[0]["longitude"], {"units": "degrees_east"}),
        },
        attrs={"source": "HRRR GRIB2 via cfgrib", "skipped_files": json.dumps(skipped)},
    )
    num_train = max(1, int(round(train_fraction * ds.sizes["time"])))
    ny, nx = ds.sizes["y"], ds.sizes["x"]
    encoding = {name: {"chunks": (1, ny, nx)} for name in VARIABLES}
    tmp = f"{store}.{os.getpid()}.tmp"
    ds.to_zarr(tmp, mode="w", encoding=encoding, consolidated=False)
    stats = compute_stats(ds.isel(time=slice(0, num_train)))
    stats["train_end"] = str(ds["time"].values[num_train - 1])
    stats["num_train_times"] = num_train
    stats["skipped_files"] = skipped
    if os.path.exists(store):
        shutil.rmtree(store)
    os.replace(tmp, store)
    with open(stats_path(store), "w") as f:
        json.dump(stats, f, indent=2)
    logging.info(
        "Wrote %s: %d times (%d for training), %d skipped.",
        store,
        len(records),
        num_train,
        len(skipped),
    )
    return stats


def stats_path(store: str) -> str:
    return os.path.join(
        os.path.dirname(os.path.abspath(store)), os.path.basename(store.rstrip("/")) + ".stats.json"
    )


def forward_transform(name: str, x: np.ndarray) -> np.ndarray:
    kind = TRANSFORMS.get(name)
    if kind == "log1p":
        return np.log1p(np.maximum(x, 0.0))
    if kind == "neglog1p":
        return np.log1p(np.maximum(-x, 0.0))
    return x


def inverse_transform(name: str, y):
    """Inverse of `forward_transform`; works on numpy and jax arrays."""
    kind = TRANSFORMS.get(name)
    if kind is None:
        return y
    xp = np if isinstance(y, np.ndarray) else jnp
    y = xp.clip(y, 0.0, 20.0)  # the transformed fields are >= 0; 20 caps exp at 5e8
    return xp.expm1(y) if kind == "log1p" else -xp.expm1(y)


def compute_stats(ds: xr.Dataset) -> dict[str, Any]:
    """Per variable: transform, mean, std of the transformed field (time-chunk by time-chunk)."""
    stats: dict[str, Any] = {"variables": {}}
    for name in VARIABLES:
        total, total_sq, count = 0.0, 0.0, 0
        for t in range(ds.sizes["time"]):
            x = forward_transform(name, np.asarray(ds[name].isel(time=t).values, np.float64))
            total, total_sq, count = total + x.sum(), total_sq + (x**2).sum(), count + x.size
        mean = total / count
        std = float(np.sqrt(max(total_sq / count - mean**2, 0.0)))
        stats["variables"][name] = {
            "transform": TRANSFORMS.get(name, "none"),
            "mean": mean,
            "std": max(std, MIN_STD[name]),
            "units": UNITS[name],
        }
    return stats


class Normaliser:
    """encode: physical [..., C] -> standardised transformed units; decode: the inverse."""

    def __init__(self, stats: dict[str, Any]):
        missing = [v for v in VARIABLES if v not in stats.get("variables", {})]
        if missing:
            raise ValueError(f"statistics lack variables {missing}.")
        v = stats["variables"]
        self.mean = np.array([v[n]["mean"] for n in VARIABLES], np.float32)
        self.std = np.array([v[n]["std"] for n in VARIABLES], np.float32)

    def encode(self, x: np.ndarray) -> np.ndarray:
        channels = [forward_transform(n, x[..., i]) for i, n in enumerate(VARIABLES)]
        return ((np.stack(channels, -1) - self.mean) / self.std).astype(np.float32)

    def decode(self, z):
        y = z * self.std + self.mean
        if isinstance(y, np.ndarray):
            return np.stack([inverse_transform(n, y[..., i]) for i, n in enumerate(VARIABLES)], -1)
        return jnp.stack([inverse_transform(n, y[..., i]) for i, n in enumerate(VARIABLES)], -1)


def open_store(store: str) -> tuple[xr.Dataset, dict[str, Any]]:
    """The Zarr store (lazy) and its statistics, with clear errors for missing parts."""
    if not os.path.exists(store):
        raise FileNotFoundError(f"{store}: no Zarr store (run scripts/prepare_weather.py).")
    if not os.path.exists(stats_path(store)):
        raise FileNotFoundError(f"{stats_path(store)}: statistics file missing (re-run prepare).")
    ds = xr.open_zarr(store, chunks=None, consolidated=False)
    for name in VARIABLES:
        if name not in ds.data_vars:
            raise ValueError(f"{store}: variable {name!r} missing; found {sorted(ds.data_vars)}.")
        if ds[name].dims != ("time", "y", "x"):
            raise ValueError(f"{store}: {name} has dims {ds[name].dims}; expected (time, y, x).")
    with open(stats_path(store)) as f:
        stats = json.load(f)
    return ds, stats


class PairSource:
    """Random-access (state at t, state at t + lead) pairs from a time range of the store.

    Record: {"cond": [H, W, C], "target": [H, W, C] (standardised), "lead": [] float32 hours,
    "index": [] int32}. Pairs whose two times are not exactly `lead` hours apart (a skipped
    file) are left out. The store is opened lazily; small stores are read once into memory.
    """

    def __init__(
        self, store: str, split: str, leads: tuple[int, ...], preload_max_mb: float = 512.0
    ):
        self.ds, self.stats = open_store(store)
        self.normaliser = Normaliser(self.stats)
        num_train = int(self.stats["num_train_times"])
        times = self.ds["time"].values
        if split not in ("train", "eval"):
            raise ValueError(f"split must be 'train' or 'eval', got {split!r}.")
        span = range(0, num_train) if split == "train" else range(num_train, len(times))
        hour = np.timedelta64(1, "h")
        index = {t: i for i, t in enumerate(times)}
        self.pairs = []
        for i in span:
            for lead in leads:
                j = index.get(times[i] + lead * hour)
                if j is not None and j in span:
                    self.pairs.append((i, j, lead))
        if not self.pairs:
            raise ValueError(f"{store}: no {split} pairs for lead times {leads} (hours).")
        self.times = times
        ny, nx = self.ds.sizes["y"], self.ds.sizes["x"]
        self.shape = (ny, nx, len(VARIABLES))
        size_mb = 4 * len(times) * ny * nx * len(VARIABLES) / 2**20
        self._cache = None
        if size_mb <= preload_max_mb:
            self._cache = self.normaliser.encode(
                np.stack([self.ds[n].values for n in VARIABLES], -1).astype(np.float32)
            )

    def state(self, i: int) -> np.ndarray:
        """Standardised state at time index i, [y, x, C] float32."""
        if self._cache is not None:
            return self._cache[i]
        raw = np.stack([np.asarray(self.ds[n].isel(time=i).values) for n in VARIABLES], -1)
        return self.normaliser.encode(raw)

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, k: int) -> dict[str, np.ndarray]:
        i, j, lead = self.pairs[k]
        return {
            "cond": self.state(i),
            "target": self.state(j),
            "lead": np.float32(lead),
            "index": np.int32(k),
        }


def check_grid(source: PairSource, store: str, shape: tuple[int, int]) -> None:
    """Raises naming the store when its grid is not `config.data.shape` (what the model trains on
    when `data.crop` is empty, and what the benchmark times)."""
    if tuple(source.shape[:2]) != tuple(shape):
        raise ValueError(
            f"{store}: grid (y, x) = {source.shape[:2]}, but config.data.shape = {tuple(shape)}; "
            f"set --config.data.shape='{source.shape[:2]}'."
        )


def residual_std(source: PairSource, max_pairs: int = 256) -> np.ndarray:
    """Per-variable std [C] of (target - cond) over up to `max_pairs` evenly spaced pairs."""
    picks = np.linspace(0, len(source) - 1, min(max_pairs, len(source))).astype(int)
    diffs = np.stack([source[int(k)]["target"] - source[int(k)]["cond"] for k in picks])
    return np.maximum(diffs.reshape(-1, diffs.shape[-1]).std(0), 1e-3).astype(np.float32)


def random_crop(size: tuple[int, int] | None):
    """`random_transform` for the train iterator: the same crop of cond and target."""

    def crop(record, rng: np.random.Generator):
        if not size:
            return record
        h, w = size
        ny, nx = record["cond"].shape[:2]
        if h > ny or w > nx:
            raise ValueError(f"crop {size} larger than the grid {(ny, nx)}.")
        y0, x0 = int(rng.integers(0, ny - h + 1)), int(rng.integers(0, nx - w + 1))
        out = dict(record)
        for key in ("cond", "target"):
            out[key] = record[key][y0 : y0 + h, x0 : x0 + w]
        return out

    return crop


def grib_paths(directory: str) -> list[str]:
    """All HRRR surface analysis/forecast files under `directory` (the archive's layout)."""
    found = []
    for root, _, files in os.walk(directory):
        found += [
            os.path.join(root, f)
            for f in files
            if f.startswith("hrrr.t") and ".wrfsfcf" in f and f.endswith(".grib2")
        ]
    return sorted(found)
