"""Reader of the Kaggle IceCube layout, and `prepare` (writes the synthetic stand-in first).

`<split>_meta.parquet` says where each event lives: its `batch_id` and the rows
`first_pulse_index..last_pulse_index` (inclusive) of `<split>/batch_<batch_id>.parquet`. Only the
meta rows of the configured batch ids are read (a row-group filter; the full train meta is ~130M
rows). A batch file is read memory-mapped on first use and kept in a small per-process LRU cache;
the training order (`data_pipeline.FileBlockShuffle`) visits the data batch file by batch file,
so a worker decodes one file at a time instead of all 660 at random.

Events leave the reader one at a time (`IceCubeSource[i]`, a record) or many at a time as a *raw
block* (`IceCubeSource.raw_block`, `raw_block`): the pulses of N events back to back,
    sensor_id [P] int64, time [P] float64, charge [P] float64, auxiliary [P] bool,
    pulse_count [N] int64, event_id [N] int64, azimuth [N] float64, zenith [N] float64,
which `data_packing.EventProcessor.block` processes with a few NumPy calls for all N events.

Pyarrow only. Every malformed input raises one error naming the file, the column and what was
expected. Per-event processing and packing are in `data_packing.py`, the grain pipelines in
`data_pipeline.py`.
"""

from __future__ import annotations

import itertools
import os
import threading
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from typing import Any

import ml_collections
import numpy as np
import pyarrow as pa
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq
from absl import logging

from jaxlab.data import ownership
from jaxlab.neutrino import synthetic
from jaxlab.neutrino.format import batch_path, geometry_path, meta_path

META_COLUMNS = ("batch_id", "event_id", "first_pulse_index", "last_pulse_index")
ANGLE_COLUMNS = ("azimuth", "zenith")
PULSE_COLUMNS = ("sensor_id", "time", "charge", "auxiliary")
GEOMETRY_COLUMNS = ("sensor_id", "x", "y", "z")


ON_DUPLICATE = ("error", "drop_later")


def read_geometry(root: str) -> np.ndarray:
    """`<root>/sensor_geometry.csv` -> [num_sensors, 3] float32 x, y, z (metres)."""
    return read_geometry_file(geometry_path(root))


def read_geometry_file(path: str) -> np.ndarray:
    """A Kaggle `sensor_geometry.csv` -> [num_sensors, 3] float32 x, y, z, row = sensor_id."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: no such file (the Kaggle sensor_geometry.csv).")
    try:
        table = pa_csv.read_csv(path)
    except (pa.ArrowException, OSError) as e:
        raise ValueError(f"{path}: cannot read as CSV ({e}).") from e
    _check_columns(path, table.column_names, GEOMETRY_COLUMNS)
    for name in GEOMETRY_COLUMNS:
        _check_numeric(path, table.schema.field(name), integer=name == "sensor_id")
    sensor_id = table["sensor_id"].to_numpy()
    if not len(sensor_id) or not np.array_equal(sensor_id, np.arange(len(sensor_id))):
        raise ValueError(f"{path}: column 'sensor_id' must be 0..N-1 in order (N >= 1).")
    xyz = np.stack([table[c].to_numpy(zero_copy_only=False) for c in "xyz"], axis=1)
    if not np.isfinite(xyz).all():
        raise ValueError(f"{path}: columns x, y, z hold NaN or Inf values.")
    return xyz.astype(np.float32)


def _check_numeric(path: str, field: pa.Field, *, integer: bool = False) -> None:
    """Column `field` must have an integer (or, unless `integer`, a floating) type."""
    ok = pa.types.is_integer(field.type) or (not integer and pa.types.is_floating(field.type))
    if not ok:
        want = "an integer" if integer else "a numeric (integer or float)"
        raise ValueError(f"{path}: column {field.name!r} is {field.type}; expected {want} type.")


def _read_parquet(path: str, columns: Sequence[str], **kwargs: Any) -> pa.Table:
    """pq.read_table with the file's path in every error (a truncated or non-parquet file)."""
    try:
        return pq.read_table(path, columns=list(columns), memory_map=True, **kwargs)
    except (pa.ArrowException, OSError) as e:
        raise ValueError(f"{path}: cannot read as parquet ({e}).") from e


def _schema_names(path: str) -> list[str]:
    try:
        return pq.read_schema(path).names
    except (pa.ArrowException, OSError) as e:
        raise ValueError(f"{path}: cannot read as parquet ({e}).") from e


def read_pulses(path: str, num_sensors: int) -> dict[str, np.ndarray]:
    """One batch file -> numpy columns sensor_id, time, charge, auxiliary [P] (the file's own
    numeric dtypes, memory-mapped where possible; callers cast per event), event_id [P] when the
    file has it, and "_path".

    The whole file is checked once, vectorised: readable, the columns present with numeric types
    and no nulls, at least one pulse, finite time / charge, sensor ids inside the geometry.
    """
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: no such file (a Kaggle batch_<n>.parquet).")
    names = _schema_names(path)
    _check_columns(path, names, PULSE_COLUMNS)
    wanted = list(PULSE_COLUMNS) + (["event_id"] if "event_id" in names else [])
    table = _read_parquet(path, wanted)
    if not table.num_rows:
        raise ValueError(f"{path}: no pulses (an empty batch file).")
    for name in wanted:
        field = table.schema.field(name)
        if name != "auxiliary":
            _check_numeric(path, field, integer=name in ("sensor_id", "event_id"))
        elif not (pa.types.is_boolean(field.type) or pa.types.is_integer(field.type)):
            raise ValueError(f"{path}: column 'auxiliary' is {field.type}; expected bool.")
        if table[name].null_count:
            raise ValueError(f"{path}: column {name!r} holds {table[name].null_count} nulls.")
    columns = {name: table[name].to_numpy(zero_copy_only=False) for name in wanted}
    for name in ("time", "charge"):
        if not np.issubdtype(columns[name].dtype, np.floating):
            continue  # integers are finite
        bad = ~np.isfinite(columns[name])
        if bad.any():
            raise ValueError(
                f"{path}: column {name!r} holds {int(bad.sum())} NaN or Inf values"
                f"{_first_event(columns, bad)}; expected finite numbers."
            )
    sensor = columns["sensor_id"]
    bad = (sensor < 0) | (sensor >= num_sensors)
    if bad.any():
        raise ValueError(
            f"{path}: column 'sensor_id' holds {int(bad.sum())} values outside "
            f"0..{num_sensors - 1} (rows of sensor_geometry.csv), e.g. {int(sensor[bad][0])}"
            f"{_first_event(columns, bad)}."
        )
    logging.info("Read %s: %d pulses", path, table.num_rows)
    return columns | {"_path": path}


def _first_event(columns: dict[str, np.ndarray], bad: np.ndarray) -> str:
    if "event_id" not in columns:
        return f" (first at row {int(np.argmax(bad))})"
    return f" (first in event_id {int(columns['event_id'][np.argmax(bad)])})"


def _check_columns(path: str, found: Sequence[str], expected: Sequence[str]) -> None:
    missing = [c for c in expected if c not in found]
    if missing:
        raise ValueError(
            f"{path}: missing column(s) {missing}; expected {list(expected)}, found {list(found)}."
        )


def read_meta(
    root: str, split: str, batch_ids: Sequence[int] = (), on_duplicate: str = "error"
) -> dict[str, np.ndarray]:
    """The meta rows of `batch_ids` (all when empty) as numpy columns.

    Returns batch_id, event_id, first_pulse_index, last_pulse_index (int64) and, when the split
    has labels, azimuth and zenith (float64). A repeated event_id is an error, or with
    `on_duplicate="drop_later"` its later rows are dropped, counted and logged.
    """
    return read_meta_file(meta_path(root, split), batch_ids, on_duplicate)


def read_meta_file(
    path: str, batch_ids: Sequence[int] = (), on_duplicate: str = "error"
) -> dict[str, np.ndarray]:
    """`read_meta` of the file at `path` (e.g. train_meta.parquet or test_meta.parquet)."""
    if on_duplicate not in ON_DUPLICATE:
        raise ValueError(f"data.on_duplicate is {on_duplicate!r}; expected one of {ON_DUPLICATE}.")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: no such file (the Kaggle <split>_meta.parquet).")
    schema_names = _schema_names(path)
    _check_columns(path, schema_names, META_COLUMNS)
    has_angles = all(c in schema_names for c in ANGLE_COLUMNS)
    columns = list(META_COLUMNS) + (list(ANGLE_COLUMNS) if has_angles else [])
    filters = [("batch_id", "in", [int(b) for b in batch_ids])] if len(batch_ids) else None
    table = _read_parquet(path, columns, filters=filters)
    for name in columns:
        _check_numeric(path, table.schema.field(name), integer=name in META_COLUMNS)
        if table[name].null_count:
            raise ValueError(f"{path}: column {name!r} holds {table[name].null_count} nulls.")
    meta = {c: table[c].to_numpy() for c in columns}
    meta = _drop_duplicates(path, meta, on_duplicate)
    if len(batch_ids):
        missing = sorted(set(int(b) for b in batch_ids) - set(np.unique(meta["batch_id"]).tolist()))
        if missing:
            raise ValueError(f"{path}: no events with batch_id in {missing}.")
    if not len(meta["event_id"]):
        raise ValueError(f"{path}: no events (batch ids {list(batch_ids) or 'all'}).")
    first, last = meta["first_pulse_index"], meta["last_pulse_index"]
    bad = np.flatnonzero((first < 0) | (last < first))
    if len(bad):
        i = bad[0]
        raise ValueError(
            f"{path}: event_id {meta['event_id'][i]} has first_pulse_index {first[i]} and "
            f"last_pulse_index {last[i]}; expected 0 <= first <= last."
        )
    if has_angles:
        for name, high in (("azimuth", 2 * np.pi), ("zenith", np.pi)):
            values = meta[name]
            bad = np.flatnonzero(~np.isfinite(values) | (values < -1e-6) | (values > high + 1e-6))
            if len(bad):
                raise ValueError(
                    f"{path}: column {name!r} of event_id {meta['event_id'][bad[0]]} is "
                    f"{values[bad[0]]}; expected a value in [0, {high:.4f}]."
                )
    return meta


def _drop_duplicates(
    path: str, meta: dict[str, np.ndarray], on_duplicate: str
) -> dict[str, np.ndarray]:
    """Rows with an event_id seen earlier in the file: an error, or dropped and counted."""
    _, first_rows = np.unique(meta["event_id"], return_index=True)
    if len(first_rows) == len(meta["event_id"]):
        return meta
    keep = np.zeros(len(meta["event_id"]), bool)
    keep[first_rows] = True
    repeated = meta["event_id"][~keep]
    if on_duplicate == "error":
        raise ValueError(
            f"{path}: column 'event_id' repeats {len(repeated)} row(s) (e.g. event_id "
            f"{int(repeated[0])}); expected each event once. Set data.on_duplicate=drop_later "
            "to keep the first row of each event."
        )
    logging.warning(
        "%s: dropped %d later row(s) of repeated event ids (data.on_duplicate=drop_later), "
        "e.g. event_id %d.",
        path,
        len(repeated),
        int(repeated[0]),
    )
    return {k: v[keep] for k, v in meta.items()}


def check_events_in_file(meta: dict[str, np.ndarray], columns: dict[str, np.ndarray]) -> None:
    """Every meta event's rows first..last of the batch file hold that event's pulses, and only
    them (vectorised over the file's meta rows). Needs the file's event_id column.
    """
    path = columns["_path"]
    num_rows = len(columns["time"])
    event_id, first, last = meta["event_id"], meta["first_pulse_index"], meta["last_pulse_index"]
    beyond = np.flatnonzero(last >= num_rows)
    if len(beyond):
        i = beyond[0]
        raise ValueError(
            f"{path}: has {num_rows} rows, but the meta table places event_id {event_id[i]} at "
            f"rows {first[i]}..{last[i]} (last_pulse_index out of range): its pulses are missing."
        )
    if "event_id" not in columns:
        return
    ids = columns["event_id"]
    starts = np.flatnonzero(np.diff(ids)) + 1  # rows where a new event begins
    split = np.searchsorted(starts, first, side="right") != np.searchsorted(
        starts, last, side="right"
    )
    bad = np.flatnonzero((ids[first] != event_id) | split)
    if len(bad):
        i = bad[0]
        raise ValueError(
            f"{path}: rows {first[i]}..{last[i]} hold event_id {ids[first[i]]}..{ids[last[i]]}, "
            f"but the meta table places event_id {event_id[i]} there: its pulses are missing "
            f"or misplaced ({len(bad)} such event(s) in this file)."
        )


def concat_ranges(starts: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """[sum(counts)] indices start[0]..start[0]+counts[0]-1, then start[1].., without a loop."""
    counts = np.asarray(counts, np.int64)
    shift = np.asarray(starts, np.int64) - (np.cumsum(counts) - counts)
    return np.repeat(shift, counts) + np.arange(int(counts.sum()))


def raw_block(records: Sequence[dict[str, Any]]) -> dict[str, np.ndarray]:
    """Raw event records (`IceCubeSource[i]`'s layout) -> one raw block (module docstring)."""

    def pulses(name: str, dtype: type) -> np.ndarray:
        return np.concatenate([np.asarray(r[name]) for r in records]).astype(dtype)

    return {
        "sensor_id": pulses("sensor_id", np.int64),
        "time": pulses("time", np.float64),
        "charge": pulses("charge", np.float64),
        "auxiliary": pulses("auxiliary", bool),
        "pulse_count": np.array([len(r["time"]) for r in records], np.int64),
        "event_id": np.array([int(r["event_id"]) for r in records], np.int64),
        "azimuth": np.array([float(r["azimuth"]) for r in records], np.float64),
        "zenith": np.array([float(r["zenith"]) for r in records], np.float64),
    }


def read_block(source: Any, indices: np.ndarray) -> dict[str, np.ndarray]:
    """The raw block of records `indices` of `source`: its own `raw_block` when it has one
    (`IceCubeSource`, gathered from the batch files), else its records stacked."""
    if hasattr(source, "raw_block"):
        return source.raw_block(indices)
    return raw_block([source[int(i)] for i in indices])


class IceCubeSource:
    """Random-access events of one split: record i is the i-th meta row.

    A record is {"sensor_id" [n] int64, "time" [n] float64, "charge" [n] float64,
    "auxiliary" [n] bool, "event_id", "azimuth", "zenith" (0 when unlabelled), "batch_id"}.
    Batch files are opened lazily and cached (`cache_files` per process, thread-safe).
    """

    def __init__(
        self,
        root: str,
        split: str,
        batch_ids: Sequence[int] = (),
        *,
        cache_files: int = 2,
        on_duplicate: str = "error",
    ):
        self.root, self.split = root, split
        self.meta = read_meta(root, split, batch_ids, on_duplicate)
        self.has_labels = "azimuth" in self.meta
        self.num_sensors = len(read_geometry(root))
        self._cache_files = max(1, cache_files)
        self._cache: OrderedDict[int, dict[str, np.ndarray]] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self.meta["event_id"])

    def __getstate__(self) -> dict[str, Any]:  # picklable for grain worker processes
        state = dict(self.__dict__)
        state["_cache"], state["_lock"] = OrderedDict(), None
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()

    def batch_ids(self) -> np.ndarray:
        """[N] batch_id of every record."""
        return self.meta["batch_id"]

    def _batch(self, batch_id: int) -> dict[str, np.ndarray]:
        # Reading under the lock: threads asking for the same file wait for one decode.
        with self._lock:
            if batch_id in self._cache:
                self._cache.move_to_end(batch_id)
                return self._cache[batch_id]
            columns = self._read_batch(batch_id)
            self._cache[batch_id] = columns
            while len(self._cache) > self._cache_files:
                self._cache.popitem(last=False)
            return columns

    def _read_batch(self, batch_id: int) -> dict[str, np.ndarray]:
        path = batch_path(self.root, self.split, batch_id)
        if not os.path.exists(path):
            raise FileNotFoundError(
                f"{path}: no such file, but {meta_path(self.root, self.split)} lists "
                f"events of batch_id {batch_id}."
            )
        columns = read_pulses(path, self.num_sensors)
        rows = self.meta["batch_id"] == batch_id
        check_events_in_file({k: v[rows] for k, v in self.meta.items()}, columns)
        return columns

    def __getitem__(self, index: int) -> dict[str, Any]:
        meta = self.meta
        event_id = int(meta["event_id"][index])
        batch_id = int(meta["batch_id"][index])
        first = int(meta["first_pulse_index"][index])
        last = int(meta["last_pulse_index"][index])
        columns = self._batch(batch_id)  # checked as a whole when read
        rows = slice(first, last + 1)
        return {
            "sensor_id": columns["sensor_id"][rows].astype(np.int64),
            "time": columns["time"][rows].astype(np.float64),
            "charge": columns["charge"][rows].astype(np.float64),
            "auxiliary": columns["auxiliary"][rows].astype(bool),
            "event_id": np.int64(event_id),
            "batch_id": np.int64(batch_id),
            "azimuth": np.float64(meta["azimuth"][index] if self.has_labels else 0.0),
            "zenith": np.float64(meta["zenith"][index] if self.has_labels else 0.0),
        }

    def raw_block(self, indices: np.ndarray) -> dict[str, np.ndarray]:
        """Records `indices`, in that order, as one raw block (the module docstring's layout).

        The pulses of each run of records from one batch file are gathered with one fancy index;
        the values equal those of `self[i]` record by record.
        """
        indices = np.asarray(indices, np.int64)
        meta = self.meta
        batch = meta["batch_id"][indices]
        first = meta["first_pulse_index"][indices]
        counts = meta["last_pulse_index"][indices] - first + 1
        runs = np.flatnonzero(np.diff(batch)) + 1
        parts: dict[str, list[np.ndarray]] = {name: [] for name in PULSE_COLUMNS}
        for a, b in zip(np.append(0, runs), np.append(runs, len(indices)), strict=True):
            columns = self._batch(int(batch[a]))  # checked as a whole when read
            rows = concat_ranges(first[a:b], counts[a:b])
            for name in PULSE_COLUMNS:
                parts[name].append(columns[name][rows])
        dtypes = {"sensor_id": np.int64, "time": np.float64, "charge": np.float64}
        labels, zeros = self.has_labels, np.zeros(len(indices))
        return {
            name: np.concatenate(parts[name]).astype(dtypes.get(name, bool))
            for name in PULSE_COLUMNS
        } | {
            "pulse_count": counts.astype(np.int64),
            "event_id": meta["event_id"][indices].astype(np.int64),
            "azimuth": meta["azimuth"][indices].astype(np.float64) if labels else zeros,
            "zenith": meta["zenith"][indices].astype(np.float64) if labels else zeros,
        }


def parse_batch_ids(spec: Any) -> tuple[int, ...]:
    """(1, 2, 3), "1-8", "1,3,5-7" or "" (all) -> tuple of batch ids."""
    if isinstance(spec, list | tuple):
        return tuple(int(b) for b in spec)
    ids = []
    for part in str(spec).replace(" ", "").split(","):
        if not part:
            continue
        if "-" in part:
            lo, hi = part.split("-")
            ids.extend(range(int(lo), int(hi) + 1))
        else:
            ids.append(int(part))
    return tuple(ids)


def prepare(config: ml_collections.ConfigDict, workdir: str) -> str:
    """The data root, after writing the synthetic dataset there when configured.

    Synthetic data goes to `data.root`, or `<workdir>/data` when that is empty; real data needs
    `data.root` (the unzipped Kaggle folder).
    """
    if not config.data.synthetic and not config.data.root:
        raise ValueError(
            "config.data.root is empty but data.synthetic is False: set --config.data.root to the "
            "unzipped Kaggle 'icecube-neutrinos-in-deep-ice' folder (the one holding "
            "sensor_geometry.csv, train_meta.parquet and train/)."
        )
    root = config.data.root or os.path.join(workdir, "data")
    if config.data.synthetic:
        # Refuses (one error, nothing written) a folder holding files jaxlab did not write.
        root = ownership.claim_synthetic_dir(root, key="data.root")
        s = config.data.synth
        synthetic.write_dataset(
            root,
            train_batches=s.train_batches,
            test_batches=s.test_batches,
            events_per_batch=s.events_per_batch,
            seed=config.seed,
            physics=event_physics(s),
        )
    return root


def event_physics(synth: ml_collections.ConfigDict) -> dict[str, float]:
    """The simulator's event sizes and physics from `config.data.synth` (synthetic.simulate_event's
    keyword arguments)."""
    names = ("max_pulses", "energy_scale", "energy_cap", "track_half_length", "noise_hits")
    return {name: synth[name] for name in names}


def simulated_events(
    config: ml_collections.ConfigDict, gen: np.random.Generator
) -> tuple[np.ndarray, Iterator[dict[str, Any]]]:
    """(geometry [5160, 3], an endless stream of freshly simulated events); no file is written.

    The synthetic dataset's detector and physics with its long-tailed event sizes
    (`config.data.synth`), as records of the reader's layout (`sensor_id`, `time`, `charge`,
    `auxiliary`, `event_id`, `azimuth`, `zenith`): the benchmark's packed batches and tests.
    """
    positions = synthetic.geometry()
    physics = event_physics(config.data.synth)

    def events() -> Iterator[dict[str, Any]]:
        for event_id in itertools.count():
            pulses, azimuth, zenith = synthetic.simulate_event(gen, positions, **physics)
            yield {**pulses, "event_id": event_id, "azimuth": azimuth, "zenith": zenith}

    return positions, events()


def load_split(config: ml_collections.ConfigDict, root: str, split: str) -> IceCubeSource:
    """ "train" / "eval" are batch subsets of train_meta; "test" is test_meta (no labels)."""
    meta_split, batches = {
        "train": ("train", config.data.train_batches),
        "eval": ("train", config.data.eval_batches),
        "test": ("test", config.data.test_batches),
    }.get(split, (None, None))
    if meta_split is not None:
        ids = parse_batch_ids(batches)
        return IceCubeSource(
            root,
            meta_split,
            ids,
            cache_files=config.data.cache_files,
            on_duplicate=config.data.on_duplicate,
        )
    raise ValueError(f"split must be 'train', 'eval' or 'test', got {split!r}.")
