"""HRRR data: prepare (GRIB2 -> Zarr), statistics, normaliser, pair source for training.

The format's facts and the GRIB2 reader are in `data_grib.py` (fields selected by their GRIB2
codes with ecCodes, any `*.grib2` name, time from the content); the bounded-memory, resumable
GRIB2 -> Zarr conversion with one-pass statistics is in `data_zarr.py`. Both are re-exported
here (`data.read_grib`, `data.prepare_zarr`, ...), the API the other modules use.

Store: Zarr, variables `refc t2m d2m u10 v10 cape cin` [time, y, x] float32, 2-D `latitude` /
`longitude`, one time step per chunk, the grid's GRIB2 keys in the attributes. `stats.json`
beside it: per variable the transform and the mean / std of the transformed field over the
training period, plus what the conversion skipped, dropped and found missing.
"""

from __future__ import annotations

import collections
import json
import os
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import xarray as xr
from absl import logging
from jax.experimental import multihost_utils

from jaxlab.data import ownership, pipeline
from jaxlab.weather import synthetic
from jaxlab.weather.data_grib import (  # noqa: F401  (the reader API other modules use)
    FIELDS,
    UNITS,
    VALID_RANGE,
    VARIABLES,
    DuplicateFieldError,
    GribError,
    MissingFieldError,
    grib_paths,
    read_grib,
    scan_grib,
)
from jaxlab.weather.data_zarr import (  # noqa: F401
    MIN_STD,
    TRANSFORMS,
    forward_transform,
    prepare_zarr,
    stats_path,
)

STORE_NAME = "hrrr.zarr"
STATS_FILE = STORE_NAME + ".stats.json"


def data_dir(config: ml_collections.ConfigDict, workdir: str) -> str:
    """`data.dir`, or `<workdir>/data` for synthetic data when it is empty."""
    return config.data.dir or os.path.join(workdir, "data")


def store_path(config: ml_collections.ConfigDict, workdir: str) -> str:
    return os.path.join(data_dir(config, workdir), STORE_NAME)


def _conversion_options(dc: ml_collections.ConfigDict) -> dict[str, Any]:
    return dict(
        train_fraction=dc.train_fraction,
        missing=dc.missing,
        on_duplicate=dc.get("on_duplicate", "error"),
        on_gap=dc.get("on_gap", "warn"),
        workers=pipeline.worker_count(dc.get("workers", 0)),
    )


def prepare(config: ml_collections.ConfigDict, workdir: str) -> str:
    """The Zarr store path; writes synthetic GRIB2 files and converts them first if configured.

    The store is `<data.dir>/hrrr.zarr`; with `data.synthetic` an empty `data.dir` means
    `<workdir>/data`, which must be empty or jaxlab's own synthetic folder (a user's folder is
    refused, never written into); real data needs `data.dir` set (scripts/prepare_weather.py).
    A store without its statistics file (an interrupted conversion) is resumed.
    """
    dc = config.data
    if not dc.synthetic and not dc.dir:
        raise ValueError(
            "config.data.dir is empty and config.data.synthetic is False: set data.dir to the "
            "folder holding hrrr.zarr and hrrr.zarr.stats.json (scripts/prepare_weather.py)."
        )
    store = store_path(config, workdir)
    if dc.synthetic and jax.process_index() == 0:
        root = ownership.claim_synthetic_dir(data_dir(config, workdir))
        paths = synthetic.write_dataset(
            os.path.join(root, "grib"),
            shape=tuple(dc.shape),
            num_times=dc.num_times,
            dx_m=dc.dx_m,
            seed=config.seed,
        )
        if not os.path.exists(stats_path(store)):
            prepare_zarr(paths, store, **_conversion_options(dc))
    if jax.process_count() > 1:
        multihost_utils.sync_global_devices("weather_prepare")
    return store


def inverse_transform(name: str, y):
    """Inverse of `forward_transform`; works on numpy and jax arrays."""
    kind = TRANSFORMS.get(name)
    if kind is None:
        return y
    xp = np if isinstance(y, np.ndarray) else jnp
    y = xp.clip(y, 0.0, 20.0)  # the transformed fields are >= 0; 20 caps exp at 5e8
    return xp.expm1(y) if kind == "log1p" else -xp.expm1(y)


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
    "index": [] int32}. Pairs whose verifying time is missing from the store (a skipped or absent
    file) are left out, logged and counted (`pairs_lost`, per lead). The store is opened lazily;
    small stores are read once into memory. Otherwise a state read is seven whole-chunk reads
    (the store holds one time step per chunk), cropped after: chunk-aligned by construction.
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
        self.pairs, lost = [], collections.Counter()
        last = times[span[-1]] if len(span) else None
        for i in span:
            for lead in leads:
                valid = times[i] + lead * hour
                j = index.get(valid)
                if j is not None and j in span:
                    self.pairs.append((i, j, lead))
                elif valid <= last:
                    lost[lead] += 1  # the verifying hour is missing from the store
        self.pairs_lost = dict(lost)
        if lost:
            missing = self.stats.get("missing_hours", [])
            logging.warning(
                "%s: %s pairs lost to %d missing hours (%s%s); lost per lead (h): %s.",
                store,
                split,
                len(missing),
                missing[:5],
                " ..." if len(missing) > 5 else "",
                dict(lost),
            )
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


def crop_offsets(
    size: tuple[int, int], grid: tuple[int, int], rng: np.random.Generator
) -> tuple[int, int]:
    """(y0, x0) of a random `size` crop of a `grid` (y, x), uniform over every position.

    The one draw of the training crops: the streamed path (`random_crop`) cuts the crop out of
    the record on the host, the device-resident path (`data_resident.crop_columns`) sends the
    offsets to the step, which slices on the device; both draw from the same generator the
    same way, so their crops are the same."""
    (h, w), (ny, nx) = size, grid
    if h > ny or w > nx:
        raise ValueError(f"crop {tuple(size)} larger than the grid {(ny, nx)}.")
    return int(rng.integers(0, ny - h + 1)), int(rng.integers(0, nx - w + 1))


def random_crop(size: tuple[int, int] | None):
    """`random_transform` for the train iterator: the same crop of cond and target."""

    def crop(record, rng: np.random.Generator):
        if not size:
            return record
        h, w = size
        y0, x0 = crop_offsets((h, w), record["cond"].shape[:2], rng)
        out = dict(record)
        for key in ("cond", "target"):
            out[key] = record[key][y0 : y0 + h, x0 : x0 + w]
        return out

    return crop


def residual_mean(source: PairSource, residual_std: np.ndarray, max_pairs: int = 256):
    """Per-variable mean [C] of (target - cond) / residual_std over up to `max_pairs` evenly
    spaced pairs (the pairs `residual_std` uses): the samplers' prior mean."""
    picks = np.linspace(0, len(source) - 1, min(max_pairs, len(source))).astype(int)
    diffs = np.stack([source[int(k)]["target"] - source[int(k)]["cond"] for k in picks])
    return (diffs.reshape(-1, diffs.shape[-1]).mean(0) / residual_std).astype(np.float32)


def hour_of_day(time: np.datetime64) -> np.float32:
    """Hours since 00 UTC of `time`'s day, in [0, 24)."""
    time = np.datetime64(time, "s")
    return np.float32((time - time.astype("datetime64[D]")) / np.timedelta64(1, "h"))


class WithHour:
    """A `PairSource` whose records also carry "hour" [] float32: the hour of day UTC of the
    pair's initial state (the diurnal phase the state alone does not give)."""

    def __init__(self, source: PairSource):
        self.source = source

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, k: int) -> dict[str, np.ndarray]:
        record = dict(self.source[k])
        record["hour"] = hour_of_day(self.source.times[self.source.pairs[k][0]])
        return record

    def __getattr__(self, name: str):
        if name == "source":  # not set yet: unpickling in a reader worker process
            raise AttributeError(name)
        return getattr(self.source, name)


# The residual scale: the one wrapper between states and the diffused quantity. Training
# (`steps`), evaluation and sampling (`ensemble`, `perturbed_ensemble`, `predict`) all go
# through these three functions, so the scale is applied the same way everywhere.


def residual_scale(extra) -> dict:
    """{"std", "mean"} [C] of the scaled one-step change, from a train state's `extra`
    (older checkpoints without `residual_mean`: zeros)."""
    std = extra["residual_std"]
    return {"std": std, "mean": extra.get("residual_mean", jnp.zeros_like(std))}


def encode_change(scale: dict, cond, target, residual: bool = True):
    """The diffused / regressed quantity [..., C]: (target - cond) / std, or `target` itself
    when `residual` is False (a model of the next state, not of its change)."""
    return (target - cond) / scale["std"] if residual else target


def decode_change(scale: dict, cond, change, residual: bool = True):
    """The inverse of `encode_change`: the next state cond + std * change (or `change`)."""
    return cond + scale["std"] * change if residual else change


# Per-sample spatial standardisation (DEF as its authors run it: every state, every solver step's
# sample and the forecaster's output have zero mean and unit std per channel over the grid).


def spatial_moments(x):
    """(mean, std) [..., 1, 1, C] of x [..., H, W, C] over the grid, std with ddof = 1 (the
    unbiased estimate, as the authors' code computes it)."""
    mean = jnp.mean(x, axis=(-3, -2), keepdims=True)
    n = x.shape[-3] * x.shape[-2]
    var = jnp.sum(jnp.square(x - mean), axis=(-3, -2), keepdims=True) / (n - 1)
    return mean, jnp.sqrt(var)


def spatial_standardise(x, eps: float = 1e-6):
    """x [..., H, W, C] with zero mean and unit std (ddof = 1) per sample and channel over the
    grid; `eps` keeps a constant field finite (it becomes zeros)."""
    mean, std = spatial_moments(x)
    return (x - mean) / jnp.maximum(std, eps)
