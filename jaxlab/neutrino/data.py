"""Reader of the Kaggle IceCube layout, and `prepare` (writes the synthetic stand-in first).

`<split>_meta.parquet` says where each event lives: its `batch_id` and the rows
`first_pulse_index..last_pulse_index` (inclusive) of `<split>/batch_<batch_id>.parquet`. Only the
meta rows of the configured batch ids are read (a row-group filter; the full train meta is ~130M
rows). A batch file is read memory-mapped on first use and kept in a small per-process LRU cache;
the training order (`data_pipeline.FileBlockShuffle`) visits the data batch file by batch file,
so a worker decodes one file at a time instead of all 660 at random.

Pyarrow only. Every malformed input raises one error naming the file, the column and what was
expected. Per-event processing and packing are in `data_packing.py`, the grain pipelines in
`data_pipeline.py`.
"""

from __future__ import annotations

import os
import threading
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

import ml_collections
import numpy as np
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq
from absl import logging

from jaxlab.neutrino import synthetic

META_COLUMNS = ("batch_id", "event_id", "first_pulse_index", "last_pulse_index")
ANGLE_COLUMNS = ("azimuth", "zenith")
PULSE_COLUMNS = ("sensor_id", "time", "charge", "auxiliary")
GEOMETRY_COLUMNS = ("sensor_id", "x", "y", "z")


def read_geometry(root: str) -> np.ndarray:
    """`sensor_geometry.csv` -> [num_sensors, 3] float32 x, y, z (metres), row = sensor_id."""
    path = synthetic.geometry_path(root)
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path}: no such file (the Kaggle sensor_geometry.csv).")
    table = pa_csv.read_csv(path)
    _check_columns(path, table.column_names, GEOMETRY_COLUMNS)
    sensor_id = table["sensor_id"].to_numpy()
    if not np.array_equal(sensor_id, np.arange(len(sensor_id))):
        raise ValueError(f"{path}: column 'sensor_id' must be 0..N-1 in order.")
    xyz = np.stack([table[c].to_numpy().astype(np.float32) for c in "xyz"], axis=1)
    if not np.isfinite(xyz).all():
        raise ValueError(f"{path}: columns x, y, z hold NaN or Inf values.")
    return xyz


def _check_columns(path: str, found: Sequence[str], expected: Sequence[str]) -> None:
    missing = [c for c in expected if c not in found]
    if missing:
        raise ValueError(
            f"{path}: missing column(s) {missing}; expected {list(expected)}, found {list(found)}."
        )


def read_meta(root: str, split: str, batch_ids: Sequence[int] = ()) -> dict[str, np.ndarray]:
    """The meta rows of `batch_ids` (all when empty) as numpy columns.

    Returns batch_id, event_id, first_pulse_index, last_pulse_index (int64) and, when the split
    has labels, azimuth and zenith (float64).
    """
    path = synthetic.meta_path(root, split)
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path}: no such file (the Kaggle {split}_meta.parquet).")
    schema_names = pq.read_schema(path).names
    _check_columns(path, schema_names, META_COLUMNS)
    has_angles = all(c in schema_names for c in ANGLE_COLUMNS)
    columns = list(META_COLUMNS) + (list(ANGLE_COLUMNS) if has_angles else [])
    filters = [("batch_id", "in", [int(b) for b in batch_ids])] if len(batch_ids) else None
    table = pq.read_table(path, columns=columns, filters=filters, memory_map=True)
    meta = {c: table[c].to_numpy() for c in columns}
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


class IceCubeSource:
    """Random-access events of one split: record i is the i-th meta row.

    A record is {"sensor_id" [n] int64, "time" [n] float64, "charge" [n] float64,
    "auxiliary" [n] bool, "event_id", "azimuth", "zenith" (0 when unlabelled), "batch_id"}.
    Batch files are opened lazily and cached (`cache_files` per process, thread-safe).
    """

    def __init__(
        self, root: str, split: str, batch_ids: Sequence[int] = (), *, cache_files: int = 2
    ):
        self.root, self.split = root, split
        self.meta = read_meta(root, split, batch_ids)
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
        path = synthetic.batch_path(self.root, self.split, batch_id)
        if not os.path.exists(path):
            raise FileNotFoundError(
                f"{path}: no such file, but {synthetic.meta_path(self.root, self.split)} lists "
                f"events of batch_id {batch_id}."
            )
        names = pq.read_schema(path).names
        _check_columns(path, names, PULSE_COLUMNS)
        wanted = list(PULSE_COLUMNS) + (["event_id"] if "event_id" in names else [])
        table = pq.read_table(path, columns=wanted, memory_map=True)
        logging.info("Read %s: %d pulses", path, table.num_rows)
        return {c: table[c].to_numpy() for c in wanted} | {"_path": path}

    def __getitem__(self, index: int) -> dict[str, Any]:
        meta = self.meta
        event_id = int(meta["event_id"][index])
        batch_id = int(meta["batch_id"][index])
        first = int(meta["first_pulse_index"][index])
        last = int(meta["last_pulse_index"][index])
        columns = self._batch(batch_id)
        path = columns["_path"]
        num_rows = len(columns["time"])
        if last >= num_rows:
            raise ValueError(
                f"{synthetic.meta_path(self.root, self.split)}: event_id {event_id} has "
                f"last_pulse_index {last}, out of range for {path} with {num_rows} rows."
            )
        rows = slice(first, last + 1)
        if "event_id" in columns:
            ids = columns["event_id"][rows]
            if ids[0] != event_id or ids[-1] != event_id:
                raise ValueError(
                    f"{path}: rows {first}..{last} hold event_id {ids[0]}..{ids[-1]}, but the "
                    f"meta table places event_id {event_id} there."
                )
        sensor_id = columns["sensor_id"][rows].astype(np.int64)
        if sensor_id.min() < 0 or sensor_id.max() >= self.num_sensors:
            bad = sensor_id[(sensor_id < 0) | (sensor_id >= self.num_sensors)][0]
            raise ValueError(
                f"{path}: column 'sensor_id' of event_id {event_id} holds {bad}; expected "
                f"0..{self.num_sensors - 1} (rows of sensor_geometry.csv)."
            )
        time = columns["time"][rows].astype(np.float64)
        charge = columns["charge"][rows].astype(np.float64)
        if not (np.isfinite(time).all() and np.isfinite(charge).all()):
            raise ValueError(f"{path}: NaN or Inf in 'time' or 'charge' of event_id {event_id}.")
        return {
            "sensor_id": sensor_id,
            "time": time,
            "charge": charge,
            "auxiliary": columns["auxiliary"][rows].astype(bool),
            "event_id": np.int64(event_id),
            "batch_id": np.int64(batch_id),
            "azimuth": np.float64(meta["azimuth"][index] if self.has_labels else 0.0),
            "zenith": np.float64(meta["zenith"][index] if self.has_labels else 0.0),
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
        s = config.data.synth
        synthetic.write_dataset(
            root,
            train_batches=s.train_batches,
            test_batches=s.test_batches,
            events_per_batch=s.events_per_batch,
            seed=config.seed,
            max_pulses=s.max_pulses,
            energy_scale=s.energy_scale,
            energy_cap=s.energy_cap,
            track_half_length=s.track_half_length,
            noise_hits=s.noise_hits,
        )
    return root


def load_split(config: ml_collections.ConfigDict, root: str, split: str) -> IceCubeSource:
    """ "train" / "eval" are batch subsets of train_meta; "test" is test_meta (no labels)."""
    meta_split, batches = {
        "train": ("train", config.data.train_batches),
        "eval": ("train", config.data.eval_batches),
        "test": ("test", config.data.test_batches),
    }.get(split, (None, None))
    if meta_split is not None:
        ids = parse_batch_ids(batches)
        return IceCubeSource(root, meta_split, ids, cache_files=config.data.cache_files)
    raise ValueError(f"split must be 'train', 'eval' or 'test', got {split!r}.")
