"""Reader of GreenEarthNet minicubes and the per-record features the model sees.

A track is a folder `<root>/<track>/<region>/<cube>.nc` (docs/data.md). One record is one 150-day
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
import os
import warnings
from typing import Any

import h5py
import ml_collections
import numpy as np
import pandas as pd
import xarray as xr
from absl import logging

from jaxlab.data import ownership
from jaxlab.vegetation import data_checks, data_features, data_normalisation, synthetic
from jaxlab.vegetation.format import BANDS

CubeError = data_checks.CubeError  # one error type for every reader of the task
check_variable = data_checks.check_variable


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
    finite = np.all([np.isfinite(frames[b]) for b in BANDS], axis=0)
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


def num_days(path: str, engine: str) -> int:
    """Length of a cube's `time` axis. NetCDF4 is HDF5: h5py reads the dimension's size without
    decoding the file (0.3 ms against 100 ms for xarray), which indexes a large training track in
    seconds; other files (NetCDF3) go through xarray."""
    try:
        with h5py.File(path, "r") as f:
            return int(f["time"].shape[0])
    except (OSError, KeyError):
        with open_cube(path, engine) as ds:
            return ds.sizes.get("time", 0)


def context_days(config: ml_collections.ConfigDict) -> int:
    """Daily steps holding the context frames (50: frames on days 4, 9, ..., 49)."""
    d = config.data
    return d.first_frame + d.frame_stride * (d.num_context - 1) + 1


def check_cube(
    ds: xr.Dataset, path: str, config: ml_collections.ConfigDict, context_only: bool = False
) -> dict[str, str]:
    """Presence, dims, dtypes and sizes of every variable the reader uses; a daily `time`.

    `context_only` (predict): the Sentinel-2 variables need only the context days on `time`; the
    E-OBS weather still covers context + forecast period (`cube_days`), on `time` or its own dated
    axis. Returns each E-OBS variable's time dimension.
    """
    d = config.data
    for dim, size in (("lat", d.image_size), ("lon", d.image_size)):
        if ds.sizes.get(dim) != size:
            raise CubeError(
                f"{path}: dimension {dim!r} has size {ds.sizes.get(dim)}; expected {size} "
                "(config.data.image_size)."
            )
    need = context_days(config) if context_only else d.cube_days
    if ds.sizes.get("time", 0) < need:
        what = "the context days" if context_only else "daily steps"
        raise CubeError(
            f"{path}: dimension 'time' has size {ds.sizes.get('time')}; expected at least "
            f"{need} ({what})."
        )
    dates = data_checks.daily_dates(ds, path, "time")
    for name in (*d.bands, *mask_variables(d.cloud_mask)):
        check_variable(ds, path, name, ("time", "lat", "lon"))
    check_variable(ds, path, "esawc_lc", ("lat", "lon"))
    dims = {}
    for name in d.weather_variables:
        if name not in ds.variables:
            raise CubeError(f"{path}: missing E-OBS variable {name!r} (expected on 'time').")
        dims[name] = data_checks.check_weather_axis(ds, path, name, dates[0], d.cube_days)
    return dims


def read_daily_weather(
    ds: xr.Dataset, path: str, names: tuple[str, ...], days: slice, on_nan: str, dims=None
):
    """[D, V] daily E-OBS values, checked (`data_checks.check_weather`); extra dims (an E-OBS
    lat/lon grid, *unverified*) averaged. NaN days, allowed only with on_nan="interpolate", are
    filled linearly and counted in the log; returns (daily, names of all-NaN variables)."""
    columns = []
    for name in names:
        dim = (dims or {}).get(name, "time")
        var = ds[name].isel({dim: days})
        values = np.asarray(data_checks.read_values(var, path, name), np.float64)
        missing = data_checks.check_weather(values, name, path, on_nan)
        if missing:
            logging.warning(
                "%s: E-OBS %s: %d NaN values of %d interpolated (data.on_weather_nan).",
                path,
                name,
                missing,
                values.size,
            )
        if values.ndim > 1:  # e.g. (time, lat_eobs, lon_eobs): the cube's E-OBS cells
            axes = tuple(i for i, dim_name in enumerate(var.dims) if dim_name != dim)
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

Normalisation = data_normalisation.Normalisation
compute_normalisation = data_normalisation.compute_normalisation


# ----------------------------------------------------------------------------- source


def read_window(
    path: str,
    config: ml_collections.ConfigDict,
    start: int,
    frame_days: np.ndarray,
    context_only: bool = False,
) -> dict[str, Any]:
    """The checked, unnormalised arrays of the window starting on day `start` of one cube.

    frame_days [30]: day (in the window) of each context and target frame. `context_only`
    (predict) reads Sentinel-2 at the context frames only; the E-OBS weather of the forecast
    period is read either way. Returns frames [F, H, W, 4] and clear [F, H, W] (F = 30, or 10
    context-only), landcover codes [H, W], weather features [20, 3 V], all-NaN variable names,
    the window's daily dates, the dates of the 30 frames and the lat / lon coordinates.
    """
    d = config.data
    read = frame_days[: d.num_context] if context_only else frame_days
    with open_cube(path, d.engine) as ds:
        dims = check_cube(ds, path, config, context_only)
        sel = ds.isel(time=start + read)
        frames = {
            name: np.asarray(data_checks.read_values(sel[name], path, name), np.float32)
            for name in (*d.bands, *mask_variables(d.cloud_mask))
        }
        lc = data_checks.read_values(ds["esawc_lc"], path, "esawc_lc")
        lat, lon = ds["lat"].values, ds["lon"].values
        dates = pd.date_range(ds["time"].values[start], periods=d.cube_days, freq="D")
        daily, all_nan = read_daily_weather(
            ds,
            path,
            tuple(d.weather_variables),
            slice(start, start + d.cube_days),
            d.on_weather_nan,
            dims,
        )
    bands = np.stack([frames[b] for b in d.bands], axis=-1)
    named = dict(zip(BANDS, [frames[b] for b in d.bands], strict=True))
    clear = clear_mask({**frames, **named}, d.cloud_mask, tuple(d.scl_clear))
    data_checks.check_reflectance(bands, clear, tuple(d.bands), path)
    weather = data_features.weather_features(
        daily,
        window=d.climatology_window,
        frame_days=frame_days[d.num_context :],
        frame_stride=d.frame_stride,
    )
    return {
        "path": path,
        "frames": bands,
        "clear": clear,
        "landcover_codes": lc,
        "weather": weather,
        "weather_missing": all_nan,
        "dates": dates,
        "frame_dates": dates[frame_days],
        "lat": lat,
        "lon": lon,
    }


def model_inputs(
    raw: dict[str, Any], norm: Normalisation, config: ml_collections.ConfigDict
) -> dict[str, np.ndarray]:
    """What the model reads of one window (context, landcover, weather, time features) and the
    persistence frame `bap` [H, W, 4], normalised; `raw` from `read_window` (targets unused)."""
    d = config.data
    nc = d.num_context
    frames = norm.bands(raw["frames"][:nc])
    clear = raw["clear"][:nc]
    # Pixels never clear take the cube's per-band median of clear context pixels, else the
    # training median.
    fallback = np.median(raw["frames"][:nc][clear], axis=0) if clear.any() else None
    fallback = norm.band_median if fallback is None else fallback.astype(np.float32)
    fallback = norm.bands(fallback)
    if d.bap_fill:
        context = data_features.best_available_pixel(frames, clear, fallback)
    else:
        context = np.where(clear[..., None], frames, fallback).astype(np.float32)
    weather = np.array(raw["weather"])
    for name in raw["weather_missing"]:  # all-NaN variable: training mean, anomaly 0
        v = list(d.weather_variables).index(name)
        weather[:, 3 * v : 3 * v + 3] = norm.weather_mean[3 * v : 3 * v + 3]
    return {
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
        "bap": context[-1],
    }


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
                length = num_days(path, self.engine)
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
        path, start = self.items[index]
        return read_window(path, self.config, start, self.frame_days)

    def __getitem__(self, index: int) -> dict[str, np.ndarray]:
        index = int(index)
        if index in self._cache:
            return self._cache[index]
        record = self.build_record(index)
        if self.config.data.cache_records:
            self._cache[index] = record
        return record

    def build_record(self, index: int) -> dict[str, np.ndarray]:
        """Record `index` read and computed from its cube (never kept in memory)."""
        if self.norm is None:
            raise ValueError("CubeSource needs a Normalisation to build records.")
        d = self.config.data
        raw = self.read_raw(index)
        record = model_inputs(raw, self.norm, self.config)
        frames = self.norm.bands(raw["frames"][d.num_context :])
        target_clear = raw["clear"][d.num_context :]
        delta = np.where(target_clear[..., None], frames - record["bap"][None], 0.0)
        record["target_mask"] = target_clear.astype(np.float32)
        record["target_delta"] = delta.astype(np.float32)
        record["index"] = np.int32(index)
        return record


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
        # Only into a folder that is missing, empty or already jaxlab's (a user's track folders
        # are refused with one error, untouched).
        root = ownership.claim_synthetic_dir(root)
        write_synthetic(config, root)
    return root


def write_synthetic(
    config: ml_collections.ConfigDict, root: str, tracks: tuple[str, ...] | None = None
) -> list[str]:
    """Writes the config's synthetic cubes under `root` (only those of `tracks` when given: the
    other tracks keep their place in `config.data.synthetic_cubes`, which seeds the cubes, with no
    cube). Existing files are kept; returns every cube path."""
    d = config.data
    cubes = tuple(
        (str(t), int(n) if tracks is None or t in tracks else 0) for t, n in d.synthetic_cubes
    )
    return synthetic.write_dataset(
        root,
        cubes=cubes,
        regions=tuple(d.synthetic_regions),
        size=d.synthetic_size,
        seed=config.seed,
        engine=d.engine,
        planted=synthetic.Planted(  # the study's planted structure (all zero: none)
            d.get("synthetic_weather_effect", 0.0),
            d.get("synthetic_trend", 0.0),
            d.get("synthetic_climatology_years", 0),
        ),
    )


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
