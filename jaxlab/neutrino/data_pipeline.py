"""grain pipelines of packed batches: the epoch-shuffled train iterator and ordered eval batches.

The training order visits the data *batch file by batch file*: each epoch permutes the files, then
the events inside each file (`FileBlockOrder`), so a worker decodes one file at a time. The order
is cut into blocks of `block_events` consecutive events (`EventBlocks`, a grain MapDataset): a
block is gathered from its batch file and processed (`data_packing.EventProcessor.block`) with a
few NumPy calls, in grain's read threads or, with `workers` > 0, in worker processes
(`mp_prefetch`; worker w processes blocks w, w + W, ... and they are taken back in order).
Packing (`_PackIterator`) runs in the consuming process, in stream order, so the packs are the
same for any thread or worker count. The checkpoint state is the block holding the first event
not yet packed and how many of its events are packed, `{"block": k, "skip": s}`, so a resume is
exact, with any worker count.
"""

from __future__ import annotations

import functools
import math
import sys
from collections.abc import Iterator
from typing import Any

import grain
import jax
import numpy as np

from jaxlab.core import rng
from jaxlab.data import pipeline
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
    """`blocks` from block `next_block` on, read by grain threads or worker processes -> packs.

    State: {"block": the block holding the first event not yet packed, "skip": how many of its
    events are packed}, the same for any thread or worker count (a run may resume with another).
    """

    def __init__(
        self,
        blocks: EventBlocks,
        spec: data_packing.PackSpec,
        options: grain.ReadOptions,
        workers: int,
    ):
        super().__init__()
        self._blocks, self._options, self._workers = blocks, options, workers
        self._packer = data_packing.Packer(spec)
        self._stream: Any = None
        self._next_block = 0  # index of the block the stream yields next
        self._buffered: list[tuple[int, int, int]] = []  # (block, first buffer index, events)
        self._skip = 0  # events of the next block already packed (after set_state)

    def _open(self) -> None:
        blocks = self._blocks[self._next_block :] if self._next_block else self._blocks
        stream = blocks.to_iter_dataset(self._options)
        stream = pipeline.with_workers(stream, self._workers)  # exits with its parent
        self._stream = iter(stream)

    def _extend(self) -> None:
        if self._stream is None:
            self._open()
        block = next(self._stream)
        count = len(block["event_id"])
        dropped = self._packer.extend(block)
        buffered = [(k, start - dropped, n) for k, start, n in self._buffered]
        self._buffered = [b for b in buffered if b[1] + b[2] > 0]
        self._buffered.append((self._next_block, len(self._packer) - count, count))
        self._next_block += 1
        if self._skip:
            self._packer.skip(self._skip)
            self._skip = 0

    def __next__(self) -> dict[str, np.ndarray]:
        while True:
            pack = self._packer.next_pack()
            if pack is not None:
                return pack
            self._extend()  # the blocks are endless

    def get_state(self) -> dict[str, int]:
        position = self._packer.position
        for block, start, count in self._buffered:
            if position < start + count:
                return {"block": block, "skip": position - start}
        return {"block": self._next_block, "skip": self._skip}

    def set_state(self, state: dict[str, Any]) -> None:
        if not isinstance(state, dict) or not {"block", "skip"} <= set(state):
            raise ValueError(
                f"neutrino train iterator state {state!r}: expected {{'block': <block index>, "
                "'skip': <events of it already packed>}."
            )
        self.close()
        self._packer = data_packing.Packer(self._packer.spec)
        self._next_block, self._skip = int(state["block"]), int(state["skip"])
        self._buffered = []

    def close(self) -> None:
        """Stops the readers (worker processes exit); the position is kept."""
        close = getattr(self._stream, "close", None)
        if callable(close):
            close()
        self._stream = None


class PackIterDataset(grain.IterDataset):
    """The packs of `blocks` (see `_PackIterator`)."""

    def __init__(
        self,
        blocks: EventBlocks,
        spec: data_packing.PackSpec,
        options: grain.ReadOptions,
        workers: int = 0,
    ):
        super().__init__()
        self._blocks, self._spec, self._options, self._workers = blocks, spec, options, workers

    def __iter__(self) -> _PackIterator:
        return _PackIterator(self._blocks, self._spec, self._options, self._workers)


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
    threads; `workers` > 0 processes the blocks in that many grain worker processes
    (`mp_prefetch`). The batches, and the checkpoint state, are the same for any of these.
    """
    process_index = jax.process_index() if process_index is None else process_index
    process_count = jax.process_count() if process_count is None else process_count
    if packs_per_batch % process_count:
        raise ValueError(
            f"data.packs_per_batch ({packs_per_batch}) must divide by the process count "
            f"({process_count})."
        )
    if block_events < 1:
        raise ValueError(f"data.block_events is {block_events}; expected >= 1 events per block.")
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 0:
        raise ValueError(f"data.workers is {workers!r}; expected a process count >= 0.")
    order = FileBlockOrder(source.batch_ids(), seed, process_index, process_count)
    blocks = EventBlocks(source, processor, order, block_events)
    ahead = max(1, num_threads, math.ceil(prefetch / block_events))
    options = grain.ReadOptions(num_threads=num_threads, prefetch_buffer_size=ahead)
    packs = PackIterDataset(blocks, spec, options, workers)
    batches = iter(packs.batch(packs_per_batch // process_count, drop_remainder=True))
    batches.workers = workers  # read by `bench --input_pipeline`, as pipeline.BatchIterator's
    return batches


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
