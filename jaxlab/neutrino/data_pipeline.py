"""grain pipelines of packed batches: the epoch-shuffled train iterator and ordered eval batches.

The training order visits the data *batch file by batch file*: each epoch permutes the files, then
the events inside each file (`FileBlockOrder`), so a worker decodes one file at a time. The order
is cut into blocks of `block_events` consecutive events (`EventBlocks`, a grain MapDataset): a
block is gathered from its batch file and processed (`data_packing.EventProcessor.block`) with a
few NumPy calls, in grain's read threads or, with `workers` > 0, in worker processes
(`mp_prefetch`, blocks interleaved back in order). Packing (`_PackIterator`) runs in the consuming
process, in stream order, so the packs are the same for any thread or worker count. The pack
iterator's checkpoint state is the block holding the first event not yet packed and how many of
its events are packed, so a resume is exact.
"""

from __future__ import annotations

import copy
import functools
import math
import sys
from collections.abc import Iterator
from typing import Any

import grain
import jax
import numpy as np

from jaxlab.core import rng
from jaxlab.neutrino import data, data_packing

# The numpy seed of the training order is [this, config.seed, epoch(, batch id)]: a named stream,
# apart from the synthetic writer's [seed, batch id].
_ORDER_STREAM = rng.name_id("data_order")


class FileBlockOrder:
    """Endless, epoch-reshuffled order of records that reads batch file by batch file.

    Epoch k visits the batch files in a permuted order and the events of each file in a permuted
    order (both from `seed`, k and the batch id), so consecutive records share a file. With
    several processes, process p takes positions p, p + P, p + 2P, ... of that order.
    """

    def __init__(
        self, batch_ids: np.ndarray, seed: int, process_index: int = 0, process_count: int = 1
    ):
        self._seed, self._p, self._count = seed, process_index, process_count
        self._files = np.unique(batch_ids)
        self._members = {int(b): np.flatnonzero(batch_ids == b) for b in self._files}
        self._size = len(batch_ids)

    @functools.lru_cache(maxsize=4)  # noqa: B019 (the order lives as long as the pipeline)
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

    def records(self, positions: np.ndarray) -> np.ndarray:
        """[n] record indices at this process's stream `positions` [n] (vectorised per file)."""
        epochs, places = np.divmod(np.asarray(positions) * self._count + self._p, self._size)
        out = np.empty(len(places), np.int64)
        for epoch in np.unique(epochs).tolist():
            mine = np.flatnonzero(epochs == epoch)
            order, ends = self._epoch(epoch)
            place = places[mine]
            file = np.searchsorted(ends, place, side="right")
            start = np.where(file > 0, ends[file - 1], 0)
            for f in np.unique(file).tolist():
                here = file == f
                out[mine[here]] = self._within(epoch, int(order[f]))[place[here] - start[here]]
        return out


class EventBlocks(grain.MapDataset):
    """Endless blocks: block k is the processed events at positions [k B, (k + 1) B) of `order`."""

    def __init__(
        self,
        source: data.IceCubeSource,
        processor: data_packing.EventProcessor,
        order: FileBlockOrder,
        block_events: int,
    ):
        super().__init__()
        self._source, self._processor, self._order = source, processor, order
        self._block_events = block_events

    def __len__(self) -> int:
        return sys.maxsize

    def __getitem__(self, index):
        if isinstance(index, slice):
            return self.slice(index)
        b = self._block_events
        records = self._order.records(np.arange(index * b, (index + 1) * b))
        return self._processor.block(self._source.raw_block(records))

    def __str__(self) -> str:
        return f"EventBlocks(block_events={self._block_events})"


class _PackIterator(grain.DatasetIterator):
    """Processed event blocks -> packs, in stream order.

    State: {"parent": the parent's state before the block holding the first event not yet packed,
    "skip": how many of that block's events are packed}.
    """

    def __init__(self, parent: grain.DatasetIterator, spec: data_packing.PackSpec):
        super().__init__(parent)
        self._packer = data_packing.Packer(spec)
        self._blocks: list[tuple[Any, int, int]] = []  # (state before, first index, events)
        self._skip = 0  # events to drop from the next block (after set_state)

    def _extend(self) -> None:
        state = copy.deepcopy(self._parent.get_state())
        block = next(self._parent)
        dropped = self._packer.extend(block)
        size = len(self._packer)
        blocks = [(s, start - dropped, n) for s, start, n in self._blocks]
        self._blocks = [b for b in blocks if b[1] + b[2] > 0]
        self._blocks.append((state, size - len(block["event_id"]), len(block["event_id"])))
        if self._skip:
            self._packer.skip(self._skip)
            self._skip = 0

    def __next__(self) -> dict[str, np.ndarray]:
        while True:
            pack = self._packer.next_pack()
            if pack is not None:
                return pack
            try:
                self._extend()
            except StopIteration:
                pack = self._packer.next_pack(final=True)
                if pack is None:
                    raise
                return pack

    def get_state(self) -> Any:
        position = self._packer.position
        for state, start, count in self._blocks:
            if position < start + count:
                return {"parent": copy.deepcopy(state), "skip": position - start}
        return {"parent": copy.deepcopy(self._parent.get_state()), "skip": self._skip}

    def set_state(self, state: Any) -> None:
        self._parent.set_state(state["parent"])
        self._packer = data_packing.Packer(self._packer.spec)
        self._blocks, self._skip = [], int(state["skip"])


class PackIterDataset(grain.IterDataset):
    def __init__(self, parent: grain.IterDataset, spec: data_packing.PackSpec):
        super().__init__(parent)
        self._spec = spec

    def __iter__(self) -> _PackIterator:
        return _PackIterator(self._parent.__iter__(), self._spec)


def train_iterator(
    source: data.IceCubeSource,
    processor: data_packing.EventProcessor,
    spec: data_packing.PackSpec,
    *,
    packs_per_batch: int,
    seed: int,
    num_threads: int = 2,
    prefetch: int = 64,
    block_events: int = 1024,
    workers: int = 0,
    process_index: int | None = None,
    process_count: int | None = None,
) -> grain.DatasetIterator:
    """Endless iterator of this process's batches: dicts of [packs_per_process, ...] arrays.

    `prefetch` events are read ahead (in whole blocks of `block_events`) by `num_threads`
    threads; `workers` > 0 processes the blocks in that many grain worker processes instead
    (`mp_prefetch`). The batches are the same for any of these settings.
    """
    process_index = jax.process_index() if process_index is None else process_index
    process_count = jax.process_count() if process_count is None else process_count
    if packs_per_batch % process_count:
        raise ValueError(
            f"data.packs_per_batch ({packs_per_batch}) must divide by the process count "
            f"({process_count})."
        )
    order = FileBlockOrder(source.batch_ids(), seed, process_index, process_count)
    blocks = EventBlocks(source, processor, order, block_events)
    ahead = max(1, num_threads, math.ceil(prefetch / block_events))
    options = grain.ReadOptions(num_threads=num_threads, prefetch_buffer_size=ahead)
    stream = blocks.to_iter_dataset(options)
    if workers > 0:
        stream = stream.mp_prefetch(
            grain.MultiprocessingOptions(num_workers=workers, per_worker_buffer_size=ahead)
        )
    packs = PackIterDataset(stream, spec)
    return iter(packs.batch(packs_per_batch // process_count, drop_remainder=True))


def eval_batches(
    source: data.IceCubeSource,
    processor: data_packing.EventProcessor,
    spec: data_packing.PackSpec,
    *,
    packs_per_batch: int,
    process_index: int | None = None,
    process_count: int | None = None,
    block_events: int = 1024,
) -> Iterator[tuple[dict[str, np.ndarray], dict[str, np.ndarray]]]:
    """One ordered pass, every event once: (this process's packs, the whole global batch).

    Every process packs the whole split the same way (cheap host work), so all processes agree
    on the number of batches; the last batch is padded with empty packs (no valid events).
    `source` is an `IceCubeSource` or any sequence of raw event records.
    """
    process_index = jax.process_index() if process_index is None else process_index
    process_count = jax.process_count() if process_count is None else process_count
    local = packs_per_batch // process_count
    packer, batch = data_packing.Packer(spec), []

    def emit(batch):
        batch = batch + [data_packing.empty_pack(spec)] * (packs_per_batch - len(batch))
        full = jax.tree.map(lambda *xs: np.stack(xs), *batch)
        mine = jax.tree.map(lambda x: x[process_index * local : (process_index + 1) * local], full)
        return mine, full

    for start in range(0, len(source), block_events):
        indices = np.arange(start, min(start + block_events, len(source)))
        packer.extend(processor.block(data.read_block(source, indices)))
        final = indices[-1] == len(source) - 1
        while (pack := packer.next_pack(final=final)) is not None:
            batch.append(pack)
            if len(batch) == packs_per_batch:
                yield emit(batch)
                batch = []
    if batch:
        yield emit(batch)
