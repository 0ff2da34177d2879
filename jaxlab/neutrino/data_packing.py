"""Event processing (normalise, group by DOM, truncate) and packing into fixed-shape blocks, both
vectorised over *blocks* of events.

Events travel as blocks: columnar arrays of many events. A raw block (`data.raw_block`, or
`IceCubeSource.raw_block` straight from a batch file) holds the pulses of N events back to back
with `pulse_count` [N]; a processed block (`EventProcessor.block`) holds the kept pulses, DOMs and
per-event counters. The per-event work is then a fixed number of NumPy calls per block (one
lexsort by (event, sensor, time), segment boundaries, `np.add.reduceat`, fancy indexing), not
Python per event.

Per event (`EventProcessor`):
  - features normalised as in the seed: time (t - 1e4) / 3e4, charge log10(q + 1e-8) / 3,
    auxiliary as 0/1; per DOM x, y, z / 500 and sensor_id / 5160;
  - pulses grouped by sensor (DOM), each DOM's pulses in time order;
  - truncation rule: a DOM keeps its first `max_pulses_per_dom` pulses in time (the earliest light
    carries the direction); an event keeps the `max_doms` DOMs with the largest summed
    non-auxiliary charge (then total charge, then earliest first pulse). Truncated pulses and DOMs
    are counted per event and logged by the train loop.

Packing ("continuous batching", `Packer`): a *pack* is one fixed-shape block of
  pulse tokens   [R, L]   R rows of L pulse tokens; each DOM is a segment of one row
  DOM tokens     [R2, L2] R2 rows of L2 DOM tokens; each event is a segment of one row
  event slots    [E]
Events enter a pack in stream order until one would not fit (its DOMs placed first-fit in the
pulse rows, the event first-fit in the DOM rows, or no event slot); that event starts the next
pack. Shapes never change, so the train step compiles once; padding is only what the last event of
a pack leaves. A batch is `train.global_batch_size` packs (the leading, sharded axis).

First-fit is computed a row at a time (`first_fit`): row 0 takes, in stream order, every item that
still fits it; row 1 the same among the items row 0 left; and so on. That is exactly the online
rule (an item goes to the first row it fits, and a row's fill only depends on the earlier items
it took), and a row costs a few NumPy calls, not a Python step per DOM.
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


# Per-event int32 counters (before truncation, and what truncation dropped).
COUNTER_KEYS = ("num_pulses", "num_doms", "pulses_truncated", "doms_truncated")
# Per-event keys of a processed block ([N] or [N, 3]); the rest are pulses [P, 3], dom_lengths [D]
# and dom_features [D, 4].
EVENT_KEYS = ("event_doms", "event_pulses", "direction", "event_id", *COUNTER_KEYS)


@dataclasses.dataclass(frozen=True)
class EventProcessor:
    """Raw events -> DOM-grouped, normalised, truncated events (numpy), a block at a time.

    `block(raw)` maps a raw block of N events (`data.raw_block`) to a processed block:
    pulses [P, 3] float32 (events, then their kept DOMs in sensor order, contiguous),
    dom_lengths [D] int32 and dom_features [D, 4] float32 of the kept DOMs, and per event
    event_doms / event_pulses [N] (kept), direction [N, 3] float32, event_id [N] int64,
    num_pulses / num_doms [N] int32 (before truncation), pulses_truncated / doms_truncated [N].
    Calling it on one raw event record gives that event's dict (`event_record`).
    """

    geometry: np.ndarray  # [num_sensors, 3] metres
    max_doms: int
    max_pulses_per_dom: int

    def __call__(self, event: dict[str, Any]) -> dict[str, Any]:
        return event_record(self.block(data.raw_block([event])), 0)

    def block(self, raw: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        counts = raw["pulse_count"]
        num_events = len(counts)
        if not num_events or not len(raw["time"]):
            raise ValueError(f"a block needs events with pulses; got {num_events} events.")
        event = np.repeat(np.arange(num_events), counts)  # sorted, so unchanged by `order`
        order = _pulse_order(event, raw["sensor_id"], raw["time"])
        sensor, time = raw["sensor_id"][order], raw["time"][order]
        charge, aux = raw["charge"][order], raw["auxiliary"][order]
        new_dom = np.ones(len(sensor), bool)
        new_dom[1:] = (sensor[1:] != sensor[:-1]) | (event[1:] != event[:-1])
        starts = np.flatnonzero(new_dom)  # first pulse of each DOM
        dom_counts = np.diff(np.append(starts, len(sensor)))
        dom_event = event[starts]
        doms = np.bincount(dom_event, minlength=num_events)

        # Which DOMs to keep (only events over `max_doms` lose any): largest non-auxiliary
        # charge, then total charge, then first time; kept DOMs stay in sensor order.
        keep_dom = np.ones(len(starts), bool)
        capped = np.flatnonzero((doms > self.max_doms)[dom_event])  # DOMs of capped events
        if len(capped):
            clean_charge = np.add.reduceat(np.where(aux, 0.0, charge), starts)[capped]
            total_charge = np.add.reduceat(charge, starts)[capped]
            keys = (time[starts][capped], -total_charge, -clean_charge, dom_event[capped])
            by_rank = capped[np.lexsort(keys)]  # grouped by event, best first
            event_of = dom_event[by_rank]
            rank = np.arange(len(by_rank)) - np.searchsorted(event_of, event_of, side="left")
            keep_dom[by_rank[rank >= self.max_doms]] = False

        within_dom = np.arange(len(sensor)) - np.repeat(starts, dom_counts)
        keep = np.repeat(keep_dom, dom_counts) & (within_dom < self.max_pulses_per_dom)
        pulses = np.stack(
            [
                (time[keep] - TIME_OFFSET_NS) / TIME_SCALE_NS,
                np.log10(charge[keep] + CHARGE_EPS) / CHARGE_SCALE,
                aux[keep].astype(np.float64),
            ],
            axis=1,
        ).astype(np.float32)
        dom_sensor = sensor[starts][keep_dom]
        dom_features = np.concatenate(
            [self.geometry[dom_sensor] / GEOMETRY_SCALE_M, dom_sensor[:, None] / SENSOR_SCALE],
            axis=1,
        ).astype(np.float32)
        event_doms = np.bincount(dom_event[keep_dom], minlength=num_events)
        event_pulses = np.bincount(event[keep], minlength=num_events)
        direction = direction_vector(raw["azimuth"], raw["zenith"])
        return {
            "pulses": pulses,
            "dom_lengths": np.minimum(dom_counts, self.max_pulses_per_dom)[keep_dom].astype(
                np.int32
            ),
            "dom_features": dom_features,
            "event_doms": event_doms,
            "event_pulses": event_pulses,
            "direction": direction.astype(np.float32),
            "event_id": raw["event_id"].astype(np.int64),
            "num_pulses": counts.astype(np.int32),
            "num_doms": doms.astype(np.int32),
            "pulses_truncated": (counts - event_pulses).astype(np.int32),
            "doms_truncated": (doms - event_doms).astype(np.int32),
        }


def _offsets(counts: np.ndarray) -> np.ndarray:
    """[N] counts -> [N + 1] start offsets (0, counts[0], counts[0] + counts[1], ...)."""
    return np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)


def event_record(block: dict[str, np.ndarray], i: int) -> dict[str, Any]:
    """Event `i` of a processed block as its own dict: pulses [P, 3], dom_lengths [D],
    dom_features [D, 4], direction [3], event_id and the counters as scalars."""
    d0, d1 = _offsets(block["event_doms"])[i : i + 2]
    p0, p1 = _offsets(block["event_pulses"])[i : i + 2]
    scalars = {"event_id": np.int64} | {k: np.int32 for k in COUNTER_KEYS}
    return {
        "pulses": block["pulses"][p0:p1],
        "dom_lengths": block["dom_lengths"][d0:d1],
        "dom_features": block["dom_features"][d0:d1],
        "direction": block["direction"][i],
    } | {k: cast(block[k][i]) for k, cast in scalars.items()}


def events_block(events: Sequence[dict[str, Any]]) -> dict[str, np.ndarray]:
    """Processed event dicts (`event_record`'s layout) -> one processed block."""
    block = {
        "pulses": np.concatenate([e["pulses"] for e in events]).reshape(-1, PULSE_FEATURES),
        "dom_lengths": np.concatenate([e["dom_lengths"] for e in events]).astype(np.int32),
        "dom_features": np.concatenate([e["dom_features"] for e in events]).reshape(
            -1, DOM_FEATURES
        ),
        "event_doms": np.array([len(e["dom_lengths"]) for e in events], np.int64),
        "event_pulses": np.array([len(e["pulses"]) for e in events], np.int64),
        "direction": np.stack([e["direction"] for e in events]).astype(np.float32),
    }
    for key, dtype in [("event_id", np.int64)] + [(k, np.int32) for k in COUNTER_KEYS]:
        block[key] = np.array([e[key] for e in events], dtype)
    return block


def concat_blocks(blocks: Sequence[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """Processed blocks back to back (events in order)."""
    return {k: np.concatenate([b[k] for b in blocks]) for k in blocks[0]}


def slice_block(block: dict[str, np.ndarray], start: int) -> dict[str, np.ndarray]:
    """Events `start`.. of a processed block (views)."""
    d0 = int(np.sum(block["event_doms"][:start]))
    p0 = int(np.sum(block["event_pulses"][:start]))
    out = {k: block[k][start:] for k in EVENT_KEYS}
    out["pulses"] = block["pulses"][p0:]
    out["dom_lengths"] = block["dom_lengths"][d0:]
    out["dom_features"] = block["dom_features"][d0:]
    return out


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


def _pulse_order(event: np.ndarray, sensor: np.ndarray, time: np.ndarray) -> np.ndarray:
    """[P] permutation sorting pulses by (event, sensor, time), ties kept in file order.

    That is `np.lexsort((time, sensor, event))`. When every event's pulses already come in time
    order (as in the Kaggle files), a stable sort by (event, sensor) alone gives the same
    permutation and is ~10x faster than lexsort with a float key.
    """
    new_event = np.ones(len(event), bool)
    new_event[1:] = event[1:] != event[:-1]
    if np.all((np.diff(time) >= 0) | new_event[1:]):
        key = event * (int(sensor.max()) + 1) + sensor
        return np.argsort(key, kind="stable")
    return np.lexsort((time, sensor, event))


def _fill_row(sizes: np.ndarray, row_len: int) -> tuple[np.ndarray, np.ndarray]:
    """(indices [k] ascending, first slots [k]) of the items one row of `row_len` takes when
    each, in order, goes in if it still fits. Sizes are >= 1.

    A run of consecutive items that fit comes from one searchsorted on the running sum; after an
    item that does not fit, the next that does is found with one comparison; each step takes at
    least one item, and a row usually fills in one or two.
    """
    total = sizes.cumsum()
    runs, slots, free, i = [], [], row_len, 0
    while True:
        before = int(total[i - 1]) if i else 0
        j = int(total.searchsorted(before + free, side="right"))  # items i..j-1 fit
        runs.append(np.arange(i, j))
        slots.append(total[i:j] - sizes[i:j] + (row_len - free - before))
        free -= int(total[j - 1]) - before
        if j + 1 >= len(sizes) or free <= 0:
            break
        fits = (sizes[j + 1 :] <= free).nonzero()[0]  # item j did not fit
        if not len(fits):
            break
        i = j + 1 + int(fits[0])
    if len(runs) == 1:
        return runs[0], slots[0]
    return np.concatenate(runs), np.concatenate(slots)


def first_fit(
    sizes: np.ndarray, num_rows: int, row_len: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Online first-fit of items [n] (in order) into `num_rows` rows of `row_len` slots.

    Returns row [n] (`num_rows` where an item fits no row), offset [n] (its first slot) and rank
    [n] (how many earlier items its row took). Items after one that fits nowhere are placed as if
    it had not been offered, so any prefix of the answer is the answer for that prefix.
    """
    n = len(sizes)
    row = np.full(n, num_rows, np.int64)
    offset = np.zeros(n, np.int64)
    rank = np.zeros(n, np.int64)
    start, left = 0, None  # items not yet placed: start.. while rows took prefixes, else `left`
    for r in range(num_rows):
        if (left is None and start == n) or (left is not None and not len(left)):
            break
        taken, slots = _fill_row(sizes[start:] if left is None else sizes[left], row_len)
        placed = taken + start if left is None else left[taken]
        row[placed] = r
        offset[placed] = slots
        rank[placed] = np.arange(len(placed))
        if left is None and len(taken) == taken[-1] + 1:  # a prefix: the rest stays contiguous
            start += len(taken)
            continue
        rest = np.arange(start, n) if left is None else left
        keep = np.ones(len(rest), bool)
        keep[taken] = False
        left = rest[keep]
    return row, offset, rank


def empty_pack(spec: PackSpec) -> dict[str, np.ndarray]:
    """A pack with no events (pads the last eval batch); `Packer` fills a copy of it."""
    s = spec
    return {
        "pulse_features": np.zeros((s.pulse_rows, s.pulse_row_len, PULSE_FEATURES), np.float32),
        "pulse_segment": np.zeros((s.pulse_rows, s.pulse_row_len), np.int32),
        "pulse_dom": np.full((s.pulse_rows, s.pulse_row_len), s.dom_tokens, np.int32),
        "dom_features": np.zeros((s.dom_rows, s.dom_row_len, DOM_FEATURES), np.float32),
        "dom_segment": np.zeros((s.dom_rows, s.dom_row_len), np.int32),
        "dom_event": np.full((s.dom_rows, s.dom_row_len), s.events, np.int32),
        "event_valid": np.zeros((s.events,), bool),
        "direction": np.zeros((s.events, 3), np.float32),
        "event_id": np.full((s.events,), -1, np.int64),
        "num_pulses": np.zeros((s.events,), np.int32),
        "num_doms": np.zeros((s.events,), np.int32),
        "pulses_truncated": np.zeros((s.events,), np.int32),
        "doms_truncated": np.zeros((s.events,), np.int32),
    }


class Packer:
    """Packs a stream of processed blocks, in order, into packs of `spec`.

    `extend` appends a block; `next_pack` returns the next pack once it is closed (an event did
    not fit, or its slots are full), None while the buffered events might still take more (extend
    again), or with `final` whatever is left. `position` is the first buffered event not packed.
    """

    def __init__(self, spec: PackSpec):
        self.spec = spec
        self.position = 0
        self._block: dict[str, np.ndarray] | None = None
        self._size = 0

    def __len__(self) -> int:
        """Buffered events (packed ones included until the next `extend`)."""
        return self._size

    def extend(self, block: dict[str, np.ndarray]) -> int:
        """Appends `block`; drops the packed events first and returns how many it dropped."""
        dropped = self.position
        if self._block is not None and self.position < self._size:
            block = concat_blocks([slice_block(self._block, self.position), block])
        self._block, self._size, self.position = block, len(block["event_id"]), 0
        self._dom_start = _offsets(block["event_doms"])
        self._pulse_start = _offsets(block["event_pulses"])
        return dropped

    def skip(self, count: int) -> None:
        """Marks the next `count` buffered events as packed (a resume inside a block)."""
        self.position = min(self.position + count, self._size)

    def next_pack(self, final: bool = False) -> dict[str, np.ndarray] | None:
        s, b, p = self.spec, self._block, self.position
        if b is None or p == self._size:
            return None
        ds, ps = self._dom_start, self._pulse_start
        # Events that can fit at all: slots, and the pack's pulse and DOM tokens in total.
        end = min(
            p + s.events,
            int(np.searchsorted(ps, ps[p] + s.pulse_rows * s.pulse_row_len, "right")) - 1,
            int(np.searchsorted(ds, ds[p] + s.dom_tokens, "right")) - 1,
        )
        end = max(end, p + 1)  # the first event is always tried (and refused if too big)
        event_row, event_offset, event_rank = first_fit(
            b["event_doms"][p:end], s.dom_rows, s.dom_row_len
        )
        dom_lengths = b["dom_lengths"][ds[p] : ds[end]]
        dom_row, dom_offset, dom_rank = first_fit(dom_lengths, s.pulse_rows, s.pulse_row_len)
        count = end - p  # events in this pack: up to the first that fits nowhere
        bad = np.flatnonzero(event_row == s.dom_rows)
        if len(bad):
            count = min(count, int(bad[0]))
        bad = np.flatnonzero(dom_row == s.pulse_rows)
        if len(bad):
            count = min(count, int(np.searchsorted(ds, ds[p] + bad[0], "right")) - 1 - p)
        if not count:
            raise ValueError(f"event {b['event_id'][p]} does not fit an empty pack {s}.")
        if not final and p + count == self._size and count < s.events:
            return None  # the next block's events may still fit
        self.position = p + count
        return self._fill(
            p, count, (event_row, event_offset, event_rank), (dom_row, dom_offset, dom_rank)
        )

    def _fill(self, p: int, count: int, events_at, doms_at) -> dict[str, np.ndarray]:
        """The pack of events p..p+count-1 at the rows and offsets `first_fit` gave."""
        s, b = self.spec, self._block
        ds, ps = self._dom_start, self._pulse_start
        pack = empty_pack(s)
        event_row, event_offset, event_rank = (x[:count] for x in events_at)
        num_doms = int(ds[p + count] - ds[p])
        dom_row, dom_offset, dom_rank = (x[:num_doms] for x in doms_at)

        # DOM tokens: event e's DOMs fill one segment of its DOM row.
        doms_per_event = b["event_doms"][p : p + count]
        dom_of_event = np.repeat(np.arange(count), doms_per_event)
        dom_in_event = np.arange(num_doms) - np.repeat(
            _offsets(doms_per_event)[:-1], doms_per_event
        )
        dom_token = (event_row * s.dom_row_len + event_offset)[dom_of_event] + dom_in_event
        pack["dom_features"].reshape(-1, DOM_FEATURES)[dom_token] = b["dom_features"][
            ds[p] : ds[p + count]
        ]
        pack["dom_segment"].reshape(-1)[dom_token] = event_rank[dom_of_event] + 1
        pack["dom_event"].reshape(-1)[dom_token] = dom_of_event

        # Pulse tokens: DOM d's pulses fill one segment of its pulse row.
        lengths = b["dom_lengths"][ds[p] : ds[p + count]]
        pulse_of_dom = np.repeat(np.arange(num_doms), lengths)
        pulse_in_dom = np.arange(len(pulse_of_dom)) - np.repeat(_offsets(lengths)[:-1], lengths)
        slot = (dom_row * s.pulse_row_len + dom_offset)[pulse_of_dom] + pulse_in_dom
        pack["pulse_features"].reshape(-1, PULSE_FEATURES)[slot] = b["pulses"][
            ps[p] : ps[p + count]
        ]
        pack["pulse_segment"].reshape(-1)[slot] = dom_rank[pulse_of_dom] + 1
        pack["pulse_dom"].reshape(-1)[slot] = dom_token[pulse_of_dom]

        events = slice(p, p + count)
        pack["event_valid"][:count] = True
        pack["direction"][:count] = b["direction"][events]
        for key in ("event_id", *COUNTER_KEYS):
            pack[key][:count] = b[key][events]
        return pack


def pack_events(events: Sequence[dict[str, Any]], spec: PackSpec) -> list[dict[str, np.ndarray]]:
    """Packs processed event dicts in order; a new pack starts when the next event does not fit."""
    return pack_block(events_block(events), spec)


def pack_block(block: dict[str, np.ndarray], spec: PackSpec) -> list[dict[str, np.ndarray]]:
    """Every event of a processed block, packed in order (the last pack may be part-full)."""
    packer = Packer(spec)
    packer.extend(block)
    packs = []
    while (pack := packer.next_pack(final=True)) is not None:
        packs.append(pack)
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
    packer = Packer(spec)
    while len(packs) < config.train.global_batch_size:
        pack = packer.next_pack()
        if pack is None:
            packer.extend(processor.block(data.raw_block([next(events) for _ in range(64)])))
        else:
            packs.append(pack)
    return jax.tree.map(lambda *xs: np.stack(xs), *packs)
