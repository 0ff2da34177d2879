"""Per-event processing (normalise, group by DOM, truncate) and packing into fixed-shape blocks.

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
`train.global_batch_size` packs (the leading, sharded axis).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import jax
import ml_collections
import numpy as np

from jaxlab.core import rng
from jaxlab.neutrino import data
from jaxlab.neutrino.format import direction_vector

# The seed's normalisation constants (not hyperparameters).
TIME_OFFSET_NS = 1.0e4
TIME_SCALE_NS = 3.0e4
CHARGE_EPS = 1e-8
CHARGE_SCALE = 3.0
SENSOR_SCALE = 5160.0
GEOMETRY_SCALE_M = 500.0

PULSE_FEATURES = 3  # time, charge, auxiliary
DOM_FEATURES = 4  # x, y, z, sensor_id

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

# Keys of a host batch that `packing_stats` reads.
STAT_KEYS = ("pulse_segment", "dom_segment", "event_valid", "pulses_truncated", "doms_truncated")


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


def make_processor(config: ml_collections.ConfigDict, root: str) -> EventProcessor:
    return EventProcessor(
        geometry=data.read_geometry(root),
        max_doms=config.data.max_doms,
        max_pulses_per_dom=config.data.max_pulses_per_dom,
    )


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


def model_inputs(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The device part of a batch (drops event ids and counters)."""
    return {k: batch[k] for k in MODEL_KEYS}


def packing_stats(batches: list[dict[str, np.ndarray]]) -> dict[str, float]:
    """Padding efficiency (real / total tokens) at both levels, events per pack, truncation.

    `batches`: host batches (at least `STAT_KEYS`) of [G, ...] arrays, e.g. one log window's.
    """
    pulses = sum(int(np.sum(b["pulse_segment"] > 0)) for b in batches)
    doms = sum(int(np.sum(b["dom_segment"] > 0)) for b in batches)
    events = sum(int(np.sum(b["event_valid"])) for b in batches)
    num_packs = sum(b["event_valid"].shape[0] for b in batches)
    b0 = batches[0]
    return {
        "pulse_token_efficiency": pulses / (num_packs * b0["pulse_segment"][0].size),
        "dom_token_efficiency": doms / (num_packs * b0["dom_segment"][0].size),
        "events_per_pack": events / num_packs,
        "pulses_truncated": float(sum(int(np.sum(b["pulses_truncated"])) for b in batches)),
        "doms_truncated": float(sum(int(np.sum(b["doms_truncated"])) for b in batches)),
    }


def synthetic_batch(config: ml_collections.ConfigDict, spec: PackSpec, seed: int) -> dict:
    """`train.global_batch_size` packs [G, ...] of freshly simulated events (no files written).

    The events have the long-tailed sizes of the synthetic writer (`config.data.synth`); for the
    benchmark and tests. `seed` picks the events.
    """
    gen = np.random.default_rng([rng.name_id("synthetic_batch"), seed])
    positions, events = data.simulated_events(config, gen)
    processor = EventProcessor(
        positions.astype(np.float32), config.data.max_doms, config.data.max_pulses_per_dom
    )
    packs: list[dict[str, np.ndarray]] = []
    builder = PackBuilder(spec)
    while len(packs) < config.train.global_batch_size:
        event = processor(next(events))
        if not builder.add(event):
            packs.append(builder.finish())
            builder = PackBuilder(spec)
            builder.add(event)
    return jax.tree.map(lambda *xs: np.stack(xs), *packs)
