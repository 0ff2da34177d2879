"""Model-ready cache of vegetation records: each window decoded, composited and normalised once.

Reading one 128 px training window from its NetCDF cube costs about half a second on one core
(opening the file, h5py chunk reads, the BAP composite, weather anomalies, normalisation). The
records the model reads do not change between epochs, so `train` (on first use) and
`jaxlab prepare` write them once to a folder of memory-mapped `.npy` arrays, one array per
record field with the window as its first axis:

  <cache folder>/vegetation/<track>/
    manifest.json          what the cache was built from (below) and its build statistics
    context.npy            [N, 10, H, W, 4]  uint16 codes (data.cache_dtype) or float32
    context_scale.npy, context_offset.npy    [N, 4]  float32: value = code * scale + offset
    target_delta.npy       [N, 20, H, W, 4]  uint16 codes (+ its scale / offset) or float32
    target_mask.npy        [N, 20, H, W]     uint8 (0 / 1, exact)
    landcover.npy          [N, H, W, 10]     uint8 one-hot (exact)
    weather.npy, time_meta.npy, target_start_doy.npy, target_doy.npy   float32 (exact)

`bap` is `context[-1]` and `index` the window's position, as in `data.CubeSource`. Reading a
record is a slice of each array (the page cache does the rest) and a cast to float32: no
decoding, no per-record header. That is why this format and not ArrayRecord (a serialised blob
per record, parsed and copied on every read) or Zarr (a chunk decompressed per read): every
record has the same static shape, so a fixed-stride array is the fastest random-access layout.
Windows of one cube never share their BAP composite (it restarts at each window), so a window
is stored whole even when `data.train_window_stride` makes windows overlap in time.

Quantisation (`data.cache_dtype = "uint16"`, the default): the normalised context and target
deltas of each window are stored as 16-bit codes on a per-window, per-band linear scale spanning
that window's values (`quantise`): |error| <= scale / 2 (plus float32 rounding), about 2e-5
normalised units for typical windows, smaller than float16's 2**-11 relative rounding (5e-4 at
1.0), and decoded 7x faster than float16 by numpy (an integer convert and a multiply-add). The
deltas' scale is symmetric, so a zero delta (cloudy target) decodes to exactly 0. Masks, land
cover, weather and time features are stored exactly. `float32` stores everything exactly
(batches bitwise equal to the uncached reader) at twice the bytes.

Staleness: the manifest records the format version, the data root, every cube's relative path,
size and mtime, the config keys that change a record's content (`CONTENT_KEYS`) and the
normalisation statistics. A cache that no longer matches is rebuilt when it lives in the
workdir (jaxlab's own folder), and refused with one message naming what changed when it lives
in a configured `data.cache_dir` (possibly shared by other runs); `data.cache="rebuild"` forces
a rebuild. The cache never goes inside the data folder.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import shutil
import time
from typing import Any

import ml_collections
import numpy as np
from absl import logging

from jaxlab.vegetation import data

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
MODES = ("auto", "off", "rebuild")
DTYPES = ("uint16", "float32")
QUANTISED = ("context", "target_delta")  # stored as uint16 codes when data.cache_dtype="uint16"
SYMMETRIC = ("target_delta",)  # scale centred on 0 so that 0 decodes exactly

# config.data keys a record's content depends on (engine, cache_dir, stats_max_cubes... do not:
# the statistics themselves are compared).
CONTENT_KEYS = (
    "image_size",
    "cube_days",
    "train_window_stride",
    "first_frame",
    "frame_stride",
    "num_context",
    "num_target",
    "bands",
    "cloud_mask",
    "scl_clear",
    "bap_fill",
    "weather_variables",
    "climatology_window",
    "on_weather_nan",
    "landcover_classes",
    "landcover_aliases",
    "year_center",
    "year_scale",
    "cache_dtype",
)


class StaleCacheError(ValueError):
    """A configured cache folder does not match the data or config (the message says how)."""


def field_specs(config: ml_collections.ConfigDict) -> dict[str, tuple[tuple[int, ...], str]]:
    """Stored record fields: name -> (per-window shape, stored dtype)."""
    d = config.data
    h = w = d.image_size
    c, nc, nt = len(d.bands), d.num_context, d.num_target
    specs = {
        "context": ((nc, h, w, c), d.cache_dtype),
        "target_delta": ((nt, h, w, c), d.cache_dtype),
        "target_mask": ((nt, h, w), "uint8"),
        "landcover": ((h, w, len(d.landcover_classes)), "uint8"),
        "weather": ((nt, 3 * len(d.weather_variables)), "float32"),
        "time_meta": ((3,), "float32"),
        "target_start_doy": ((1,), "float32"),
        "target_doy": ((nt,), "float32"),
    }
    if d.cache_dtype == "uint16":
        for name in QUANTISED:
            specs[f"{name}_scale"] = ((c,), "float32")
            specs[f"{name}_offset"] = ((c,), "float32")
    return specs


def quantise(x: np.ndarray, symmetric: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """x [..., C] -> (codes uint16 [..., C], scale [C], offset [C]), x ~ codes * scale + offset.

    The scale spans each channel's values ([min, max], or [-max|x|, max|x|] when `symmetric`, so
    that 0 is the code 32768 and decodes to exactly 0), so the rounding error is <= scale / 2.
    A constant channel gets scale 1 and decodes exactly."""
    axes = tuple(range(x.ndim - 1))
    x = np.asarray(x, np.float64)
    if symmetric:
        half = np.abs(x).max(axis=axes)
        scale = np.where(half > 0, half / 32767, 1.0).astype(np.float32)
        offset = (np.float32(-32768) * scale).astype(np.float32)
    else:
        low, high = x.min(axis=axes), x.max(axis=axes)
        scale = np.where(high > low, (high - low) / 65535, 1.0).astype(np.float32)
        offset = low.astype(np.float32)
    codes = np.rint((x - offset) / scale).clip(0, 65535).astype(np.uint16)
    return codes, scale, offset


def dequantise(codes: np.ndarray, scale: np.ndarray, offset: np.ndarray) -> np.ndarray:
    """uint16 codes [..., W, C] -> float32 codes * scale + offset, scale / offset [C].

    Done on rows of W * C values with scale / offset tiled to a row: numpy's inner loop then
    runs over W * C elements instead of C (10x faster at C = 4)."""
    out = np.array(codes, np.float32)
    rows = out.reshape(-1, codes.shape[-2] * codes.shape[-1]) if codes.ndim > 1 else out
    reps = rows.shape[-1] // len(scale)
    rows *= np.tile(np.asarray(scale, np.float32), reps)
    rows += np.tile(np.asarray(offset, np.float32), reps)
    return out


def error_bound(x: np.ndarray, scale: np.ndarray, offset: np.ndarray) -> np.ndarray:
    """Largest |decoded - x| for values x [..., C] quantised with (scale, offset) [C]: half a
    step, plus the float32 rounding of the multiply-add."""
    return scale / 2 + 2.0**-22 * (np.abs(x) + np.abs(offset) + 65535 * scale)


# ----------------------------------------------------------------------------- manifest


def _plain(value: Any) -> Any:
    """Config values as JSON-comparable lists / scalars (tuples become lists)."""
    if isinstance(value, tuple | list):
        return [_plain(v) for v in value]
    return value


def fingerprint(
    config: ml_collections.ConfigDict, root: str, track: str, norm: data.Normalisation
) -> dict[str, Any]:
    """What a cache of `track` depends on: files (path, size, mtime), config keys, statistics."""
    root = os.path.abspath(root)
    files = []
    for path in data.list_cubes(root, track):
        stat = os.stat(path)
        files.append([os.path.relpath(path, root), stat.st_size, stat.st_mtime_ns])
    stats = {k: v for k, v in norm.stats.items() if k != "num_cubes"}
    return {
        "format_version": FORMAT_VERSION,
        "root": root,
        "track": track,
        "config": {f"data.{k}": _plain(config.data[k]) for k in CONTENT_KEYS},
        "normalisation": stats,
        "files": files,
    }


def differences(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """What changed from the cache's manifest `old` to the current `new` fingerprint."""
    changes = []
    for key in ("format_version", "root", "track"):
        if old.get(key) != new[key]:
            changes.append(f"{key} {old.get(key)!r} -> {new[key]!r}")
    old_config = old.get("config", {})
    for key, value in new["config"].items():
        if old_config.get(key) != value:
            changes.append(f"config {key} {old_config.get(key)!r} -> {value!r}")
    if old.get("normalisation") != new["normalisation"]:
        changes.append("the normalisation statistics (normalisation.json)")
    old_files = {f[0]: f[1:] for f in old.get("files", [])}
    new_files = {f[0]: f[1:] for f in new["files"]}
    added = sorted(set(new_files) - set(old_files))
    removed = sorted(set(old_files) - set(new_files))
    touched = sorted(p for p in set(old_files) & set(new_files) if old_files[p] != new_files[p])
    for what, paths in (("new", added), ("removed", removed), ("changed (size or mtime)", touched)):
        if paths:
            more = f" and {len(paths) - 3} more" if len(paths) > 3 else ""
            changes.append(f"{len(paths)} cube file(s) {what}: {', '.join(paths[:3])}{more}")
    return changes


def read_manifest(folder: str) -> dict[str, Any] | None:
    path = os.path.join(folder, MANIFEST)
    if not os.path.isfile(path):
        return None
    with open(path) as f:
        return json.load(f)


# ----------------------------------------------------------------------------- reader


class CachedSource:
    """Random-access records of one track from its cache folder; same records as
    `data.CubeSource` (to the float16 rounding of context / target_delta when so stored).

    Picklable without its arrays (worker processes map the files themselves)."""

    def __init__(
        self,
        folder: str,
        manifest: dict[str, Any],
        config: ml_collections.ConfigDict,
        norm: data.Normalisation,
    ):
        d = config.data
        self.folder = folder
        self.config = config
        self.norm = norm
        self.track = manifest["track"]
        root = manifest["root"]
        self.paths = [os.path.join(root, f[0]) for f in manifest["files"]]
        self.items = [(os.path.join(root, rel), int(start)) for rel, start in manifest["items"]]
        self.frame_days = d.first_frame + d.frame_stride * np.arange(d.num_context + d.num_target)
        self.specs = field_specs(config)
        self.quantised = config.data.cache_dtype == "uint16"
        self._arrays: dict[str, np.ndarray] | None = None

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_arrays"] = None
        return state

    def arrays(self) -> dict[str, np.ndarray]:
        """The memory-mapped [N, ...] array of each field (mapped on first use)."""
        if self._arrays is None:
            self._arrays = {
                name: np.load(os.path.join(self.folder, f"{name}.npy"), mmap_mode="r")
                for name in self.specs
            }
        return self._arrays

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> dict[str, np.ndarray]:
        index = int(index)
        if not 0 <= index < len(self.items):
            raise IndexError(f"record {index} of {len(self.items)} ({self.folder})")
        arrays = self.arrays()
        record = {}
        for name in self.specs:
            if name.endswith(("_scale", "_offset")):
                continue
            if self.quantised and name in QUANTISED:
                record[name] = dequantise(
                    arrays[name][index],
                    arrays[f"{name}_scale"][index],
                    arrays[f"{name}_offset"][index],
                )
            else:
                record[name] = np.array(arrays[name][index], np.float32)
        record["bap"] = record["context"][-1]
        record["index"] = np.int32(index)
        return record


# ----------------------------------------------------------------------------- writer


def write_records(source: data.CubeSource, folder: str, indices: list[int]) -> int:
    """Computes records `indices` of `source` and writes them into the arrays already created in
    `folder` (each call maps them itself: one call per worker process); returns how many."""
    specs = field_specs(source.config)
    quantised = source.config.data.cache_dtype == "uint16"
    arrays = {name: np.load(os.path.join(folder, f"{name}.npy"), mmap_mode="r+") for name in specs}
    for i in indices:
        record = source.build_record(i)
        if quantised:
            for name in QUANTISED:
                codes, scale, offset = quantise(record[name], name in SYMMETRIC)
                record = {**record, name: codes, f"{name}_scale": scale, f"{name}_offset": offset}
        for name, array in arrays.items():
            array[i] = record[name]
    for array in arrays.values():
        array.flush()
    return len(indices)


def num_workers(config: ml_collections.ConfigDict, num_records: int) -> int:
    """Build processes: data.cache_build_workers (-1: one per CPU core), at most one per 8
    records (a process costs seconds to start); 0 = in this process."""
    workers = config.data.cache_build_workers
    if workers < 0:
        workers = os.cpu_count() or 1
    return min(workers, num_records // 8)


def build(source: data.CubeSource, folder: str, fingerprint_: dict[str, Any]) -> dict[str, Any]:
    """Writes every record of `source` to `folder` (replaced atomically); returns the manifest.

    The arrays are written to a temporary sibling folder, the manifest last, then renamed into
    place, so a build cut short leaves no cache that looks complete. With build workers, each
    worker process (spawned: no inherited JAX state) computes and writes a contiguous block of
    records; the bytes are the same as an in-process build's."""
    n = len(source)
    specs = field_specs(source.config)
    parent = os.path.dirname(folder)
    os.makedirs(parent, exist_ok=True)
    tmp = f"{folder}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    for name, (shape, dtype) in specs.items():
        path = os.path.join(tmp, f"{name}.npy")
        np.lib.format.open_memmap(path, mode="w+", dtype=dtype, shape=(n, *shape)).flush()
    workers = num_workers(source.config, n)
    start = time.perf_counter()
    # Contiguous blocks: 4 per worker (load balance), else of ~100 (progress in the log).
    num_blocks = 4 * workers if workers else -(-n // 100)
    blocks = [b.tolist() for b in np.array_split(np.arange(n), max(1, num_blocks)) if len(b)]
    if workers:
        with multiprocessing.get_context("spawn").Pool(workers) as pool:
            jobs = [(source, tmp, block) for block in blocks]
            done = 0
            for count in pool.starmap(write_records, jobs, chunksize=1):
                done += count
            logging.info("Cache %s: %d windows by %d processes", folder, done, workers)
    else:
        for block in blocks:
            write_records(source, tmp, block)
            logging.info("Cache %s: %d / %d windows", folder, block[-1] + 1, n)
    seconds = time.perf_counter() - start
    cache_bytes = sum(os.path.getsize(os.path.join(tmp, f"{name}.npy")) for name in specs)
    source_bytes = sum(f[1] for f in fingerprint_["files"])
    root = fingerprint_["root"]
    manifest = {
        **fingerprint_,
        "items": [[os.path.relpath(p, root), int(s)] for p, s in source.items],
        "fields": {name: [list(shape), dtype] for name, (shape, dtype) in specs.items()},
        "build": {
            "windows": n,
            "seconds": round(seconds, 3),
            "windows_per_s": round(n / max(seconds, 1e-9), 3),
            "worker_processes": workers,  # 0: built in the calling process
            "bytes": cache_bytes,
            "bytes_per_window": cache_bytes // max(n, 1),
            "source_bytes": source_bytes,
        },
    }
    with open(os.path.join(tmp, MANIFEST), "w") as f:
        json.dump(manifest, f, indent=1)
    old = f"{folder}.old-{os.getpid()}"
    if os.path.exists(folder):
        os.replace(folder, old)
    os.replace(tmp, folder)
    shutil.rmtree(old, ignore_errors=True)
    logging.info(
        "Cache %s: %d windows in %.1f s (%.2f windows/s), %.2f MB per window (source %.2f MB)",
        folder,
        n,
        seconds,
        n / max(seconds, 1e-9),
        cache_bytes / max(n, 1) / 1e6,
        source_bytes / max(n, 1) / 1e6,
    )
    return manifest


# ----------------------------------------------------------------------------- entry point


def cache_folder(config: ml_collections.ConfigDict, workdir: str, root: str, track: str) -> str:
    """`<data.cache_dir or <workdir>/cache>/vegetation/<track>`; refused inside the data folder."""
    base = os.path.abspath(config.data.cache_dir or os.path.join(workdir, "cache"))
    data_root = os.path.realpath(root)
    real = os.path.realpath(base)
    if real == data_root or real.startswith(data_root + os.sep):
        raise ValueError(
            f"data.cache_dir {base!r} is inside the data folder {root!r}; jaxlab never writes "
            "there. Leave data.cache_dir empty (<workdir>/cache) or point it elsewhere."
        )
    return os.path.join(base, "vegetation", track)


def check_mode(config: ml_collections.ConfigDict) -> None:
    d = config.data
    if d.cache not in MODES:
        raise ValueError(f"data.cache = {d.cache!r}; use one of {MODES}.")
    if d.cache_dtype not in DTYPES:
        raise ValueError(f"data.cache_dtype = {d.cache_dtype!r}; use one of {DTYPES}.")


def load(
    config: ml_collections.ConfigDict,
    workdir: str,
    root: str,
    track: str,
    norm: data.Normalisation,
) -> CachedSource | data.CubeSource:
    """The track's records: from its cache (built or rebuilt first when needed), or straight
    from the cubes when `data.cache = "off"`."""
    check_mode(config)
    if config.data.cache == "off":
        return data.load(config, root, track, norm)
    folder = cache_folder(config, workdir, root, track)
    current = fingerprint(config, root, track, norm)
    manifest = read_manifest(folder)
    if manifest is None and os.path.exists(folder) and os.listdir(folder):
        raise StaleCacheError(
            f"{folder} exists and holds no {MANIFEST}: not a jaxlab cache, left untouched. Point "
            "data.cache_dir elsewhere (or remove the folder)."
        )
    rebuild = config.data.cache == "rebuild" or manifest is None
    if manifest is not None and not rebuild:
        changes = differences(manifest, current)
        if changes:
            if config.data.cache_dir:
                raise StaleCacheError(
                    f"The cache {folder} was built from other data or settings: "
                    f"{'; '.join(changes)}. Rebuild it with --config.data.cache=rebuild (other "
                    "runs reading it will see the new records) or set data.cache_dir elsewhere."
                )
            logging.warning("Rebuilding the cache %s: %s", folder, "; ".join(changes))
            rebuild = True
    if rebuild:
        source = data.load(config, root, track, norm)
        manifest = build(source, folder, current)
    return CachedSource(folder, manifest, config, norm)


def prepare(config: ml_collections.ConfigDict, workdir: str) -> str:
    """`jaxlab prepare`: the model-ready caches of the training and validation tracks, after the
    normalisation they depend on; returns the cache folders ("" with data.cache=off)."""
    check_mode(config)
    if config.data.cache == "off":
        return ""
    root = data.data_dir(config, workdir)
    norm = data.normalisation(config, workdir, root)
    folders = [
        load(config, workdir, root, track, norm).folder
        for track in (config.data.train_track, config.data.val_track)
    ]
    return ", ".join(folders)
