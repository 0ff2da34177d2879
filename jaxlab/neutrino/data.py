"""Reader of the Kaggle IceCube layout, DOM grouping, and packing into fixed-shape batches.

Reading (pyarrow only). `<split>_meta.parquet` says where each event lives: its `batch_id` and the
rows `first_pulse_index..last_pulse_index` (inclusive) of `<split>/batch_<batch_id>.parquet`. Only
the meta rows of the configured batch ids are read (a row-group filter; the full train meta is
~130M rows). A batch file is read memory-mapped on first use and kept in a small per-process LRU
cache, and the training order visits the data *batch file by batch file*: each epoch permutes the
files, then the events inside each file (`FileBlockShuffle`), so a worker decodes one file at a
time instead of all 660 at random.

Per event (`EventProcessor`, on the host inside grain):
  - features normalised as in the seed: time (t - 1e4) / 3e4, charge log10(q + 1e-8) / 3,
    auxiliary as 0/1; per DOM x, y, z / 500 and sensor_id / 5160;
  - pulses grouped by sensor (DOM), each DOM's pulses in time order;
  - truncation rule: a DOM keeps its first `max_pulses_per_dom` pulses in time (the earliest light
    carries the direction); an event keeps the `max_doms` DOMs with the largest summed
    non-auxiliary charge (then total charge, then earliest first pulse). Truncated pulses and DOMs
    are counted per event and logged by the train loop.

Packing ("continuous batching", `PackBuilder`): a *pack* is one fixed-shape block of
  pulse tokens   [R, L]   R rows of L pulse tokens; each DOM is a segment of one row
  DOM tokens     [R2, L2] R2 rows of L2 DOM tokens; each event is a segment of one row
  event slots    [E]
Events enter a pack in stream order until one would not fit (pulse rows first-fit, its DOMs in one
DOM row, or no event slot); that event starts the next pack. Shapes never change, so the train step
compiles once; padding is only what the last event of a pack leaves. A batch is
`packs_per_batch` packs (the leading, sharded axis). The pack iterator's checkpoint state is the
reader position *before* the event that is waiting for the next pack, so a resume is exact.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import os
import sys
import threading
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from typing import Any

import grain
import jax
import ml_collections
import numpy as np
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq
from absl import logging

from jaxlab.neutrino import synthetic

# The seed's normalisation constants (not hyperparameters).
TIME_OFFSET_NS = 1.0e4
TIME_SCALE_NS = 3.0e4
CHARGE_EPS = 1e-8
CHARGE_SCALE = 3.0
SENSOR_SCALE = 5160.0
GEOMETRY_SCALE_M = 500.0

PULSE_FEATURES = 3  # time, charge, auxiliary
DOM_FEATURES = 4  # x, y, z, sensor_id

META_COLUMNS = ("batch_id", "event_id", "first_pulse_index", "last_pulse_index")
ANGLE_COLUMNS = ("azimuth", "zenith")
PULSE_COLUMNS = ("sensor_id", "time", "charge", "auxiliary")
GEOMETRY_COLUMNS = ("sensor_id", "x", "y", "z")

# Arrays of a pack that go to the device; the rest of a pack is host-side bookkeeping.
MODEL_KEYS = (
    "pulse_features",
    "pulse_segment",
    "pulse_dom",
    "dom_features",
    "dom_segment",
    "dom_event",
    "event_valid",
    "direction",
)


# ----------------------------------------------------------------------------------------------
# Reading.


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
    """The data root, after writing the synthetic dataset there when configured."""
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


# ----------------------------------------------------------------------------------------------
# Per-event processing: normalise, group by DOM, truncate.


@dataclasses.dataclass(frozen=True)
class EventProcessor:
    """Raw event record -> DOM-grouped, normalised, truncated record (numpy).

    Output: pulses [P, 3] float32 (DOMs contiguous), dom_lengths [D] int32, dom_features [D, 4]
    float32, direction [3] float32, event_id, num_pulses / num_doms (before truncation),
    pulses_truncated / doms_truncated.
    """

    geometry: np.ndarray  # [num_sensors, 3] metres
    max_doms: int
    max_pulses_per_dom: int

    def __call__(self, event: dict[str, Any]) -> dict[str, Any]:
        sensor = event["sensor_id"]
        time = event["time"]
        order = np.lexsort((time, sensor))  # by sensor, then time
        sensor, time = sensor[order], time[order]
        charge, aux = event["charge"][order], event["auxiliary"][order]
        doms, starts, counts = np.unique(sensor, return_index=True, return_counts=True)

        # Which DOMs to keep: largest non-auxiliary charge, then total charge, then first time.
        clean_charge = np.add.reduceat(np.where(aux, 0.0, charge), starts)
        total_charge = np.add.reduceat(charge, starts)
        first_time = time[starts]
        rank = np.lexsort((first_time, -total_charge, -clean_charge))
        keep = np.sort(rank[: self.max_doms])  # kept DOMs in sensor order

        kept_counts = np.minimum(counts[keep], self.max_pulses_per_dom)
        pulse_index = np.concatenate(
            [np.arange(s, s + n) for s, n in zip(starts[keep], kept_counts, strict=True)]
        )
        pulses = np.stack(
            [
                (time[pulse_index] - TIME_OFFSET_NS) / TIME_SCALE_NS,
                np.log10(charge[pulse_index] + CHARGE_EPS) / CHARGE_SCALE,
                aux[pulse_index].astype(np.float64),
            ],
            axis=1,
        ).astype(np.float32)
        dom_sensor = doms[keep]
        dom_features = np.concatenate(
            [self.geometry[dom_sensor] / GEOMETRY_SCALE_M, dom_sensor[:, None] / SENSOR_SCALE],
            axis=1,
        ).astype(np.float32)
        direction = synthetic.direction_vector(event["azimuth"], event["zenith"])
        return {
            "pulses": pulses,
            "dom_lengths": kept_counts.astype(np.int32),
            "dom_features": dom_features,
            "direction": direction.astype(np.float32),
            "event_id": np.int64(event["event_id"]),
            "num_pulses": np.int32(len(time)),
            "num_doms": np.int32(len(doms)),
            "pulses_truncated": np.int32(len(time) - len(pulse_index)),
            "doms_truncated": np.int32(len(doms) - len(keep)),
        }


def make_processor(config: ml_collections.ConfigDict, root: str) -> EventProcessor:
    return EventProcessor(
        geometry=read_geometry(root),
        max_doms=config.data.max_doms,
        max_pulses_per_dom=config.data.max_pulses_per_dom,
    )


# ----------------------------------------------------------------------------------------------
# Packing.


@dataclasses.dataclass(frozen=True)
class PackSpec:
    """Static shapes of one pack (see the module docstring)."""

    pulse_rows: int  # R
    pulse_row_len: int  # L
    dom_rows: int  # R2
    dom_row_len: int  # L2
    events: int  # E

    @classmethod
    def from_config(cls, config: ml_collections.ConfigDict) -> PackSpec:
        d = config.data
        spec = cls(d.pulse_rows, d.pulse_row_len, d.dom_rows, d.dom_row_len, d.pack_events)
        if d.max_pulses_per_dom > spec.pulse_row_len:
            raise ValueError(
                f"data.max_pulses_per_dom ({d.max_pulses_per_dom}) must be <= data.pulse_row_len "
                f"({spec.pulse_row_len}): a DOM is one segment of one row."
            )
        if d.max_doms > spec.dom_row_len:
            raise ValueError(
                f"data.max_doms ({d.max_doms}) must be <= data.dom_row_len ({spec.dom_row_len}): "
                "an event is one segment of one DOM row."
            )
        if d.max_doms * d.max_pulses_per_dom > spec.pulse_rows * spec.pulse_row_len:
            raise ValueError(
                "data.max_doms * data.max_pulses_per_dom must fit one pack's pulse tokens "
                f"(data.pulse_rows * data.pulse_row_len = {spec.pulse_rows * spec.pulse_row_len})."
            )
        return spec

    @property
    def dom_tokens(self) -> int:
        return self.dom_rows * self.dom_row_len


class PackBuilder:
    """Fills one pack event by event; `add` returns False (and changes nothing) when full."""

    def __init__(self, spec: PackSpec):
        self.spec = spec
        s = spec
        self.pulse_features = np.zeros((s.pulse_rows, s.pulse_row_len, PULSE_FEATURES), np.float32)
        self.pulse_segment = np.zeros((s.pulse_rows, s.pulse_row_len), np.int32)
        self.pulse_dom = np.full((s.pulse_rows, s.pulse_row_len), s.dom_tokens, np.int32)
        self.dom_features = np.zeros((s.dom_rows, s.dom_row_len, DOM_FEATURES), np.float32)
        self.dom_segment = np.zeros((s.dom_rows, s.dom_row_len), np.int32)
        self.dom_event = np.full((s.dom_rows, s.dom_row_len), s.events, np.int32)
        self.direction = np.zeros((s.events, 3), np.float32)
        self.event_id = np.full((s.events,), -1, np.int64)
        self.info = np.zeros((s.events, 4), np.int32)  # num_pulses, num_doms, truncated x2
        self.pulse_fill = np.zeros(s.pulse_rows, np.int64)
        self.pulse_segments = np.zeros(s.pulse_rows, np.int32)
        self.dom_fill = np.zeros(s.dom_rows, np.int64)
        self.dom_segments = np.zeros(s.dom_rows, np.int32)
        self.num_events = 0

    def _place_doms(self, lengths: np.ndarray) -> list[int] | None:
        """First-fit row for each DOM's pulse sequence, or None if one does not fit."""
        fill = self.pulse_fill.copy()
        rows = []
        for n in lengths:
            free = np.flatnonzero(fill + n <= self.spec.pulse_row_len)
            if not len(free):
                return None
            rows.append(int(free[0]))
            fill[free[0]] += n
        return rows

    def add(self, event: dict[str, Any]) -> bool:
        s = self.spec
        lengths = event["dom_lengths"]
        num_doms = len(lengths)
        if self.num_events == s.events:
            return False
        dom_row_free = np.flatnonzero(self.dom_fill + num_doms <= s.dom_row_len)
        if not len(dom_row_free):
            return False
        pulse_rows = self._place_doms(lengths)
        if pulse_rows is None:
            return False

        e = self.num_events
        r2 = int(dom_row_free[0])
        d0 = int(self.dom_fill[r2])
        self.dom_segments[r2] += 1
        self.dom_features[r2, d0 : d0 + num_doms] = event["dom_features"]
        self.dom_segment[r2, d0 : d0 + num_doms] = self.dom_segments[r2]
        self.dom_event[r2, d0 : d0 + num_doms] = e
        self.dom_fill[r2] += num_doms

        offsets = np.concatenate([[0], np.cumsum(lengths)])
        for j, (row, n) in enumerate(zip(pulse_rows, lengths, strict=True)):
            p0 = int(self.pulse_fill[row])
            self.pulse_segments[row] += 1
            self.pulse_features[row, p0 : p0 + n] = event["pulses"][offsets[j] : offsets[j + 1]]
            self.pulse_segment[row, p0 : p0 + n] = self.pulse_segments[row]
            self.pulse_dom[row, p0 : p0 + n] = r2 * s.dom_row_len + d0 + j
            self.pulse_fill[row] += n

        self.direction[e] = event["direction"]
        self.event_id[e] = event["event_id"]
        self.info[e] = [
            event["num_pulses"],
            event["num_doms"],
            event["pulses_truncated"],
            event["doms_truncated"],
        ]
        self.num_events += 1
        return True

    def finish(self) -> dict[str, np.ndarray]:
        valid = np.arange(self.spec.events) < self.num_events
        return {
            "pulse_features": self.pulse_features,
            "pulse_segment": self.pulse_segment,
            "pulse_dom": self.pulse_dom,
            "dom_features": self.dom_features,
            "dom_segment": self.dom_segment,
            "dom_event": self.dom_event,
            "event_valid": valid,
            "direction": self.direction,
            "event_id": self.event_id,
            "num_pulses": self.info[:, 0],
            "num_doms": self.info[:, 1],
            "pulses_truncated": self.info[:, 2],
            "doms_truncated": self.info[:, 3],
        }


def empty_pack(spec: PackSpec) -> dict[str, np.ndarray]:
    """A pack with no events (pads the last eval batch)."""
    return PackBuilder(spec).finish()


def pack_events(events: Sequence[dict[str, Any]], spec: PackSpec) -> list[dict[str, np.ndarray]]:
    """Packs processed events in order; a new pack starts when the next event does not fit."""
    packs, builder = [], PackBuilder(spec)
    for event in events:
        if not builder.add(event):
            if not builder.num_events:
                raise ValueError(f"event {event['event_id']} does not fit an empty pack {spec}.")
            packs.append(builder.finish())
            builder = PackBuilder(spec)
            builder.add(event)
    if builder.num_events:
        packs.append(builder.finish())
    return packs


class _PackIterator(grain.DatasetIterator):
    """Processed events -> packs. State: the parent position of the first unpacked event."""

    def __init__(self, parent: grain.DatasetIterator, spec: PackSpec):
        super().__init__(parent)
        self._spec = spec
        self._pending: tuple[Any, dict[str, Any]] | None = None

    def _fetch(self) -> tuple[Any, dict[str, Any]]:
        if self._pending is not None:
            pending, self._pending = self._pending, None
            return pending
        state = copy.deepcopy(self._parent.get_state())
        return state, next(self._parent)

    def __next__(self) -> dict[str, np.ndarray]:
        builder = PackBuilder(self._spec)
        while True:
            try:
                state, event = self._fetch()
            except StopIteration:
                if builder.num_events:
                    return builder.finish()
                raise
            if not builder.add(event):
                if not builder.num_events:
                    raise ValueError(
                        f"event {event['event_id']} does not fit an empty pack {self._spec}."
                    )
                self._pending = (state, event)
                return builder.finish()

    def get_state(self) -> Any:
        if self._pending is not None:
            return copy.deepcopy(self._pending[0])
        return self._parent.get_state()

    def set_state(self, state: Any) -> None:
        self._parent.set_state(state)
        self._pending = None


class PackIterDataset(grain.IterDataset):
    def __init__(self, parent: grain.IterDataset, spec: PackSpec):
        super().__init__(parent)
        self._spec = spec

    def __iter__(self) -> _PackIterator:
        return _PackIterator(self._parent.__iter__(), self._spec)


class FileBlockShuffle(grain.MapDataset):
    """Endless, epoch-reshuffled order that reads batch file by batch file.

    Epoch k visits the batch files in a permuted order and the events of each file in a permuted
    order (both from `seed`, k and the batch id), so consecutive records share a file. With
    several processes, process p takes records p, p + P, p + 2P, ... of that order.
    """

    def __init__(
        self,
        parent: grain.MapDataset,
        batch_ids: np.ndarray,
        seed: int,
        process_index: int = 0,
        process_count: int = 1,
    ):
        super().__init__(parent)
        self._seed, self._p, self._count = seed, process_index, process_count
        self._files = np.unique(batch_ids)
        self._members = {int(b): np.flatnonzero(batch_ids == b) for b in self._files}
        self._size = len(batch_ids)

    def __len__(self) -> int:
        return sys.maxsize

    @functools.lru_cache(maxsize=4)  # noqa: B019 (the dataset lives as long as the pipeline)
    def _epoch(self, epoch: int) -> tuple[np.ndarray, np.ndarray]:
        order = np.random.default_rng([self._seed, epoch]).permutation(self._files)
        sizes = np.array([len(self._members[int(b)]) for b in order])
        return order, np.cumsum(sizes)

    @functools.lru_cache(maxsize=8)  # noqa: B019
    def _within(self, epoch: int, batch_id: int) -> np.ndarray:
        members = self._members[batch_id]
        return np.random.default_rng([self._seed, epoch, batch_id]).permutation(members)

    def __getitem__(self, index):
        if isinstance(index, slice):
            return self.slice(index)
        epoch, position = divmod(index * self._count + self._p, self._size)
        order, ends = self._epoch(epoch)
        f = int(np.searchsorted(ends, position, side="right"))
        start = ends[f - 1] if f else 0
        record = int(self._within(epoch, int(order[f]))[position - start])
        return self._parent[record]

    def __str__(self) -> str:
        return f"FileBlockShuffle(files={len(self._files)}, seed={self._seed})"


def train_iterator(
    source: IceCubeSource,
    processor: EventProcessor,
    spec: PackSpec,
    *,
    packs_per_batch: int,
    seed: int,
    num_threads: int = 2,
    prefetch: int = 64,
    process_index: int | None = None,
    process_count: int | None = None,
) -> grain.DatasetIterator:
    """Endless iterator of this process's batches: dicts of [packs_per_process, ...] arrays."""
    process_index = jax.process_index() if process_index is None else process_index
    process_count = jax.process_count() if process_count is None else process_count
    if packs_per_batch % process_count:
        raise ValueError(
            f"data.packs_per_batch ({packs_per_batch}) must divide by the process count "
            f"({process_count})."
        )
    ds = FileBlockShuffle(
        grain.MapDataset.source(source), source.batch_ids(), seed, process_index, process_count
    )
    ds = ds.map(processor)
    options = grain.ReadOptions(num_threads=num_threads, prefetch_buffer_size=prefetch)
    packs = PackIterDataset(ds.to_iter_dataset(options), spec)
    return iter(packs.batch(packs_per_batch // process_count, drop_remainder=True))


def eval_batches(
    source: IceCubeSource,
    processor: EventProcessor,
    spec: PackSpec,
    *,
    packs_per_batch: int,
    process_index: int | None = None,
    process_count: int | None = None,
) -> Iterator[tuple[dict[str, np.ndarray], dict[str, np.ndarray]]]:
    """One ordered pass, every event once: (this process's packs, the whole global batch).

    Every process packs the whole split the same way (cheap host work), so all processes agree
    on the number of batches; the last batch is padded with empty packs (no valid events).
    """
    process_index = jax.process_index() if process_index is None else process_index
    process_count = jax.process_count() if process_count is None else process_count
    local = packs_per_batch // process_count
    events = (processor(source[i]) for i in range(len(source)))
    builder, batch = PackBuilder(spec), []

    def emit(batch):
        batch = batch + [empty_pack(spec)] * (packs_per_batch - len(batch))
        full = jax.tree.map(lambda *xs: np.stack(xs), *batch)
        mine = jax.tree.map(lambda x: x[process_index * local : (process_index + 1) * local], full)
        return mine, full

    for event in events:
        if builder.add(event):
            continue
        batch.append(builder.finish())
        builder = PackBuilder(spec)
        if not builder.add(event):
            raise ValueError(f"event {event['event_id']} does not fit an empty pack {spec}.")
        if len(batch) == packs_per_batch:
            yield emit(batch)
            batch = []
    if builder.num_events:
        batch.append(builder.finish())
    if batch:
        yield emit(batch)


def model_inputs(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The device part of a batch (drops event ids and counters)."""
    return {k: batch[k] for k in MODEL_KEYS}
