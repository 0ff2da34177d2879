"""The per-event implementation that `data_packing` / `data_pipeline` replaced, kept verbatim as the
reference the vectorised code must match bit for bit (tests only; not imported by the package).

`EventProcessor` processed one event with NumPy, `PackBuilder` placed one event at a time,
`FileBlockShuffle` mapped one stream position to a record, `reference_batches` chained them the way
the old train iterator did.
"""

from __future__ import annotations

import dataclasses
import functools
import sys
from collections.abc import Iterator, Sequence
from typing import Any

import grain
import numpy as np

from jaxlab.neutrino.data_packing import (
    CHARGE_EPS,
    CHARGE_SCALE,
    DOM_FEATURES,
    GEOMETRY_SCALE_M,
    PULSE_FEATURES,
    SENSOR_SCALE,
    TIME_OFFSET_NS,
    TIME_SCALE_NS,
    PackSpec,
)
from jaxlab.neutrino.data_pipeline import _ORDER_STREAM
from jaxlab.neutrino.format import direction_vector


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
        direction = direction_vector(event["azimuth"], event["zenith"])
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
        order = np.random.default_rng([_ORDER_STREAM, self._seed, epoch]).permutation(self._files)
        sizes = np.array([len(self._members[int(b)]) for b in order])
        return order, np.cumsum(sizes)

    @functools.lru_cache(maxsize=8)  # noqa: B019
    def _within(self, epoch: int, batch_id: int) -> np.ndarray:
        members = self._members[batch_id]
        return np.random.default_rng([_ORDER_STREAM, self._seed, epoch, batch_id]).permutation(
            members
        )

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


def reference_batches(
    source: Any,
    processor: EventProcessor,
    spec: PackSpec,
    *,
    packs_per_batch: int,
    seed: int,
    process_index: int = 0,
    process_count: int = 1,
) -> Iterator[dict[str, np.ndarray]]:
    """The old train iterator's batches: records in `FileBlockShuffle` order, one event at a time
    through `processor` into `PackBuilder`s, `packs_per_batch // process_count` packs a batch."""
    order = FileBlockShuffle(
        grain.MapDataset.source(source), source.batch_ids(), seed, process_index, process_count
    )
    builder, packs = PackBuilder(spec), []
    for position in range(sys.maxsize):
        event = processor(order[position])
        if builder.add(event):
            continue
        packs.append(builder.finish())
        builder = PackBuilder(spec)
        assert builder.add(event)
        if len(packs) == packs_per_batch // process_count:
            yield {k: np.stack([p[k] for p in packs]) for k in packs[0]}
            packs = []
