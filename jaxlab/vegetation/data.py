"""Reader of GreenEarthNet minicubes and the per-record features the model sees.

A track is a folder `<root>/<track>/<region>/<cube>.nc` (FORMATS.md). One record is one 150-day
window of one cube, sampled as the published models do, `isel(time=slice(4, None, 5))`: 30
five-daily frames, 10 context (50 days) and 20 target (100 days). Cubes longer than 150 days
(the train track may hold longer series; *unverified*) give several windows.

Record (numpy, H = W = image size; reflectance normalised per band to the training track's
2nd-98th percentile range, see `Normalisation`):
  context          [10, H, W, 4]  best-available-pixel (BAP) composite of B02, B03, B04, B8A
  landcover        [H, W, 10]     one-hot ESA WorldCover
  weather          [20, 21]       per target frame and E-OBS variable: min anomaly, max anomaly,
                                  mean climatology over the frame's 5 days (standardised)
  time_meta        [3]            normalised year, sin / cos day of year of the window start
  target_start_doy [1]            day of year of the first target frame / 365
  target_doy       [20]           day of year of each target frame (for the Fourier decoder)
  target_mask      [20, H, W]     1 where the target frame is clear
  target_delta     [20, H, W, 4]  target - last BAP (0 where cloudy)
  bap              [H, W, 4]      last BAP frame, the persistence forecast
  index            []             record index

The pure feature functions (BAP composite, weather aggregation, time features) are in
data_features.py; this module reads files, checks them and builds records.
"""

from __future__ import annotations

import glob
import json
import os
import warnings
from typing import Any

import ml_collections
import numpy as np
import pandas as pd
import xarray as xr
from absl import logging

from jaxlab.vegetation import data_features, synthetic

# Above this a band is not on the 0..1 reflectance scale (e.g. 0..10000 digital numbers).
MAX_REFLECTANCE = 5.0


class CubeError(ValueError):
    """A cube file that does not match the GreenEarthNet layout; names file and variable."""


# ----------------------------------------------------------------------------- variables


def landcover_onehot(
    lc: np.ndarray, classes: tuple[int, ...], aliases: tuple[tuple[int, int], ...], path: str
) -> np.ndarray:
    """ESA WorldCover codes [H, W] -> one-hot [H, W, len(classes)]; NaN / 0 (no data) -> zeros."""
    codes = np.nan_to_num(np.asarray(lc, np.float64), nan=0.0).round().astype(np.int64)
    for src, dst in aliases:
        codes = np.where(codes == src, dst, codes)
    known = np.isin(codes, list(classes)) | (codes == 0)
    if not known.all():
        bad = sorted(set(np.unique(codes[~known]).tolist()))
        raise CubeError(
            f"{path}: variable 'esawc_lc' holds codes {bad[:10]}; expected ESA WorldCover "
            f"classes {list(classes)} (aliases {list(aliases)}) or 0 / NaN for no data."
        )
    return (codes[..., None] == np.asarray(classes)).astype(np.float32)


def clear_mask(frames: dict[str, np.ndarray], kind: str, scl_clear: tuple[int, ...]) -> np.ndarray:
    """Clear-sky [T, H, W] bool from the mask variables; NaN band values are never clear."""
    finite = np.all([np.isfinite(frames[b]) for b in synthetic.BANDS], axis=0)
    with np.errstate(invalid="ignore"):
        if kind == "s2_mask":
            clear = frames["s2_mask"] == 0
        elif kind == "s2_SCL":
            clear = np.isin(frames["s2_SCL"], scl_clear)
        elif kind == "s2_dlmask":
            clear = frames["s2_dlmask"] < 1
        elif kind == "official":
            clear = (frames["s2_dlmask"] < 1) & np.isin(frames["s2_SCL"], scl_clear)
        else:
            raise ValueError(
                f"data.cloud_mask = {kind!r}; use 's2_mask', 's2_SCL', 's2_dlmask' or 'official'."
            )
    return clear & finite


def mask_variables(kind: str) -> tuple[str, ...]:
    return {"s2_mask": ("s2_mask",), "s2_SCL": ("s2_SCL",), "s2_dlmask": ("s2_dlmask",)}.get(
        kind, ("s2_dlmask", "s2_SCL")
    )


# ----------------------------------------------------------------------------- files


def open_cube(path: str, engine: str) -> xr.Dataset:
    """Opens one cube lazily; clear errors for a missing or unreadable file."""
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path}: no such GreenEarthNet cube file.")
    try:
        return xr.open_dataset(path, engine=engine, cache=False)
    except ValueError as e:
        raise CubeError(
            f"{path}: xarray cannot open it with engine {engine!r} ({e}); set "
            "config.data.engine to 'h5netcdf' or 'netcdf4' (whichever is installed)."
        ) from e
    except OSError as e:
        raise CubeError(f"{path}: not a readable NetCDF file ({e}).") from e


def check_variable(ds: xr.Dataset, path: str, name: str, dims: tuple[str, ...]) -> None:
    if name not in ds.variables:
        raise CubeError(
            f"{path}: missing variable {name!r} (expected dims {dims}); the file has "
            f"{sorted(ds.data_vars)[:30]}."
        )
    if ds[name].dims != dims:
        raise CubeError(f"{path}: variable {name!r} has dims {ds[name].dims}; expected {dims}.")


def check_cube(ds: xr.Dataset, path: str, config: ml_collections.ConfigDict) -> None:
    """Presence, dims and sizes of every variable the reader uses."""
    d = config.data
    for dim, size in (("lat", d.image_size), ("lon", d.image_size)):
        if ds.sizes.get(dim) != size:
            raise CubeError(
                f"{path}: dimension {dim!r} has size {ds.sizes.get(dim)}; expected {size} "
                "(config.data.image_size)."
            )
    if ds.sizes.get("time", 0) < d.cube_days:
        raise CubeError(
            f"{path}: dimension 'time' has size {ds.sizes.get('time')}; expected at least "
            f"{d.cube_days} daily steps."
        )
    for name in (*d.bands, *mask_variables(d.cloud_mask)):
        check_variable(ds, path, name, ("time", "lat", "lon"))
    check_variable(ds, path, "esawc_lc", ("lat", "lon"))
    for name in d.weather_variables:
        if name not in ds.variables:
            raise CubeError(f"{path}: missing E-OBS variable {name!r} (expected on 'time').")
        if "time" not in ds[name].dims:
            raise CubeError(f"{path}: E-OBS variable {name!r} has dims {ds[name].dims}; no 'time'.")


def read_daily_weather(ds: xr.Dataset, path: str, names: tuple[str, ...], days: slice):
    """[D, V] daily E-OBS values; extra dims (an E-OBS lat/lon grid, *unverified*) averaged."""
    columns = []
    for name in names:
        var = ds[name].isel(time=days)
        values = np.asarray(var.values, np.float64)
        if values.ndim > 1:  # e.g. (time, lat_eobs, lon_eobs): the cube's E-OBS cells
            axes = tuple(i for i, dim in enumerate(var.dims) if dim != "time")
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN days stay NaN
                values = np.nanmean(values, axis=axes)
        columns.append(values)
    daily = np.stack(columns, axis=-1)
    all_nan = [n for n, col in zip(names, daily.T, strict=True) if not np.isfinite(col).any()]
    if all_nan:
        logging.warning("%s: E-OBS %s all NaN; using the training mean climatology.", path, all_nan)
    return data_features.fill_gaps(daily), all_nan


def list_cubes(root: str, track: str) -> list[str]:
    """Sorted `<root>/<track>/<region>/*.nc` paths; error when the track is empty."""
    track_dir = os.path.join(root, track)
    if not os.path.isdir(track_dir):
        raise FileNotFoundError(
            f"{track_dir}: no such track folder (expected <data_dir>/<track>/<region>/<cube>.nc)."
        )
    paths = sorted(glob.glob(os.path.join(track_dir, "*", "*.nc")))
    if not paths:
        raise FileNotFoundError(f"{track_dir}: no <region>/<cube>.nc files.")
    return paths


def region_and_name(path: str) -> tuple[str, str]:
    return os.path.basename(os.path.dirname(path)), os.path.basename(path)


# ----------------------------------------------------------------------------- normalisation


class Normalisation:
    """Per-band 2nd-98th percentile range and per-feature weather mean / std, as JSON."""

    def __init__(self, stats: dict[str, list[float]]):
        self.band_low = np.asarray(stats["band_low"], np.float32)
        self.band_high = np.asarray(stats["band_high"], np.float32)
        self.band_median = np.asarray(stats["band_median"], np.float32)
        self.weather_mean = np.asarray(stats["weather_mean"], np.float32)
        self.weather_std = np.asarray(stats["weather_std"], np.float32)
        self.stats = stats

    def bands(self, x: np.ndarray) -> np.ndarray:
        return ((x - self.band_low) / (self.band_high - self.band_low)).astype(np.float32)

    def unbands(self, x: np.ndarray) -> np.ndarray:
        return (x * (self.band_high - self.band_low) + self.band_low).astype(np.float32)

    def weather(self, features: np.ndarray) -> np.ndarray:
        return ((features - self.weather_mean) / self.weather_std).astype(np.float32)

    def save(self, path: str) -> None:
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        tmp = f"{path}.{os.getpid()}.tmp"
        with open(tmp, "w") as f:
            json.dump(self.stats, f, indent=2)
        os.replace(tmp, path)

    @classmethod
    def load(cls, path: str) -> Normalisation:
        with open(path) as f:
            return cls(json.load(f))


def compute_normalisation(source: CubeSource, max_cubes: int, percentiles) -> Normalisation:
    """Band percentiles over clear pixels and weather-feature moments of up to `max_cubes`."""
    picks = np.unique(np.linspace(0, len(source) - 1, min(max_cubes, len(source))).astype(int))
    rng = np.random.default_rng(0)
    pixels, weather = [], []
    for i in picks:
        raw = source.read_raw(int(i))
        values = raw["frames"][raw["clear"]]  # [N, 4]
        if len(values) > 20_000:
            values = values[rng.choice(len(values), 20_000, replace=False)]
        pixels.append(values)
        weather.append(raw["weather"])
    pixels = np.concatenate(pixels)
    if len(pixels) == 0:
        raise ValueError(f"No clear pixel in {len(picks)} training cubes: cannot normalise.")
    low, high = np.percentile(pixels, percentiles, axis=0)
    weather = np.concatenate(weather)
    stats = {
        "band_low": low.tolist(),
        "band_high": np.maximum(high, low + 1e-3).tolist(),
        "band_median": np.median(pixels, axis=0).tolist(),
        "weather_mean": weather.mean(0).tolist(),
        "weather_std": np.maximum(weather.std(0), 1e-3).tolist(),
        "num_cubes": int(len(picks)),
    }
    return Normalisation(stats)


# ----------------------------------------------------------------------------- source


class CubeSource:
    """Random-access records of one track (see the module docstring for the record)."""

    def __init__(
        self,
        root: str,
        track: str,
        config: ml_collections.ConfigDict,
        norm: Normalisation | None = None,
        windows: bool = False,
    ):
        d = config.data
        self.config = config
        self.track = track
        self.paths = list_cubes(root, track)
        self.norm = norm
        self.engine = d.engine
        if d.train_window_stride % d.frame_stride:
            raise ValueError("data.train_window_stride must be a multiple of data.frame_stride.")
        # (path, first day) of each 150-day window.
        self.items = []
        for path in self.paths:
            starts = [0]
            if windows:
                with open_cube(path, self.engine) as ds:
                    length = ds.sizes.get("time", 0)
                starts = list(range(0, max(length - d.cube_days, 0) + 1, d.train_window_stride))
            self.items.extend((path, s) for s in starts)
        self._cache: dict[int, dict[str, np.ndarray]] = {}
        n_frames = d.num_context + d.num_target
        last = d.first_frame + d.frame_stride * (n_frames - 1)
        if last >= d.cube_days:
            raise ValueError(f"{n_frames} frames from day {d.first_frame} exceed data.cube_days.")
        # Day index (in the window) of each of the 30 frames.
        self.frame_days = d.first_frame + d.frame_stride * np.arange(n_frames)

    def __len__(self) -> int:
        return len(self.items)

    def read_raw(self, index: int) -> dict[str, Any]:
        """Unnormalised frames [30, H, W, 4], clear [30, H, W], weather [20, 21], static, dates."""
        d = self.config.data
        path, start = self.items[index]
        with open_cube(path, self.engine) as ds:
            check_cube(ds, path, self.config)
            frame_index = start + self.frame_days
            sel = ds.isel(time=frame_index)
            frames = {
                name: np.asarray(sel[name].values, np.float32)
                for name in (*d.bands, *mask_variables(d.cloud_mask))
            }
            lc = np.asarray(ds["esawc_lc"].values)
            dates = pd.DatetimeIndex(ds["time"].values[start : start + d.cube_days])
            daily, all_nan = read_daily_weather(
                ds, path, tuple(d.weather_variables), slice(start, start + d.cube_days)
            )
        bands = np.stack([frames[b] for b in d.bands], axis=-1)
        named = dict(zip(synthetic.BANDS, [frames[b] for b in d.bands], strict=True))
        clear = clear_mask({**frames, **named}, d.cloud_mask, tuple(d.scl_clear))
        if clear.any() and np.nanmax(bands[clear]) > MAX_REFLECTANCE:
            raise CubeError(
                f"{path}: variables {list(d.bands)} reach {np.nanmax(bands[clear]):.1f} on clear "
                f"pixels; expected reflectance on a 0..1 scale (not 0..10000 digital numbers)."
            )
        target_days = self.frame_days[d.num_context :]
        weather = data_features.weather_features(
            daily, window=d.climatology_window, frame_days=target_days, frame_stride=d.frame_stride
        )
        return {
            "path": path,
            "frames": bands,
            "clear": clear,
            "landcover_codes": lc,
            "weather": weather,
            "weather_missing": all_nan,
            "dates": dates,
            "frame_dates": dates[self.frame_days],
        }

    def __getitem__(self, index: int) -> dict[str, np.ndarray]:
        index = int(index)
        if index in self._cache:
            return self._cache[index]
        if self.norm is None:
            raise ValueError("CubeSource needs a Normalisation to build records.")
        d = self.config.data
        raw = self.read_raw(index)
        norm = self.norm
        frames = norm.bands(raw["frames"])
        clear = raw["clear"]
        nc = d.num_context
        fallback = norm.bands(self._fallback(raw))
        if d.bap_fill:
            context = data_features.best_available_pixel(frames[:nc], clear[:nc], fallback)
        else:
            context = np.where(clear[:nc, ..., None], frames[:nc], fallback).astype(np.float32)
        bap = context[-1]
        target_clear = clear[nc:]
        delta = np.where(target_clear[..., None], frames[nc:] - bap[None], 0.0)
        weather = raw["weather"]
        for name in raw["weather_missing"]:  # all-NaN variable: training mean, anomaly 0
            v = list(d.weather_variables).index(name)
            weather[:, 3 * v : 3 * v + 3] = norm.weather_mean[3 * v : 3 * v + 3]
        record = {
            "context": context,
            "landcover": landcover_onehot(
                raw["landcover_codes"],
                tuple(d.landcover_classes),
                tuple(tuple(a) for a in d.landcover_aliases),
                raw["path"],
            ),
            "weather": norm.weather(weather),
            **data_features.time_features(
                raw["dates"], raw["frame_dates"][nc:], d.year_center, d.year_scale
            ),
            "target_mask": target_clear.astype(np.float32),
            "target_delta": delta.astype(np.float32),
            "bap": bap,
            "index": np.int32(index),
        }
        if d.cache_records:
            self._cache[index] = record
        return record

    def _fallback(self, raw: dict[str, Any]) -> np.ndarray:
        """Per-band median of the cube's clear context pixels, else the training median."""
        context = raw["frames"][: self.config.data.num_context]
        clear = raw["clear"][: self.config.data.num_context]
        if clear.any():
            return np.median(context[clear], axis=0).astype(np.float32)
        return self.norm.band_median


def data_dir(config: ml_collections.ConfigDict, workdir: str) -> str:
    """`config.data.dir`; for synthetic data it may be empty (then `<workdir>/data`)."""
    if not config.data.dir and not config.data.synthetic:
        raise ValueError(
            "config.data.dir is empty: set --config.data.dir to the GreenEarthNet root holding "
            "<track>/<region>/<cube>.nc (or data.synthetic=True to write synthetic cubes)."
        )
    return config.data.dir or os.path.join(workdir, "data")


def prepare(config: ml_collections.ConfigDict, workdir: str) -> str:
    """The data root, after writing synthetic cubes there when `config.data.synthetic`."""
    root = data_dir(config, workdir)
    d = config.data
    if d.synthetic:
        synthetic.write_dataset(
            root,
            cubes=tuple((str(t), int(n)) for t, n in d.synthetic_cubes),
            regions=tuple(d.synthetic_regions),
            size=d.synthetic_size,
            seed=config.seed,
            engine=d.engine,
        )
    return root


def normalisation(config: ml_collections.ConfigDict, workdir: str, root: str) -> Normalisation:
    """The training track's statistics: read from `<workdir>/normalisation.json`, else computed
    on the training track and saved there (so evaluation reuses exactly the training ones)."""
    path = os.path.join(workdir, "normalisation.json")
    if os.path.exists(path):
        return Normalisation.load(path)
    source = CubeSource(root, config.data.train_track, config)
    norm = compute_normalisation(source, config.data.stats_max_cubes, config.data.percentiles)
    norm.save(path)
    logging.info("Normalisation from %d training cubes saved to %s", norm.stats["num_cubes"], path)
    return norm


def load(config, root: str, track: str, norm: Normalisation) -> CubeSource:
    return CubeSource(root, track, config, norm, windows=track == config.data.train_track)
