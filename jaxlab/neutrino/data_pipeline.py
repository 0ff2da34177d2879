"""grain pipelines of packed batches: the epoch-shuffled train iterator and ordered eval batches.

The training order visits the data *batch file by batch file*: each epoch permutes the files, then
the events inside each file (`FileBlockShuffle`), so a worker decodes one file at a time. Events
are processed and packed (`data_packing.py`) on the host; a batch is `packs_per_batch` packs.
The pack iterator's checkpoint state is the reader position *before* the event that is waiting
for the next pack, so a resume is exact.
"""

from __future__ import annotations

import copy
import functools
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


class _PackIterator(grain.DatasetIterator):
    """Processed events -> packs. State: the parent position of the first unpacked event."""

    def __init__(self, parent: grain.DatasetIterator, spec: data_packing.PackSpec):
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
        builder = data_packing.PackBuilder(self._spec)
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
    def __init__(self, parent: grain.IterDataset, spec: data_packing.PackSpec):
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


def train_iterator(
    source: data.IceCubeSource,
    processor: data_packing.EventProcessor,
    spec: data_packing.PackSpec,
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
    source: data.IceCubeSource,
    processor: data_packing.EventProcessor,
    spec: data_packing.PackSpec,
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
    builder, batch = data_packing.PackBuilder(spec), []

    def emit(batch):
        batch = batch + [data_packing.empty_pack(spec)] * (packs_per_batch - len(batch))
        full = jax.tree.map(lambda *xs: np.stack(xs), *batch)
        mine = jax.tree.map(lambda x: x[process_index * local : (process_index + 1) * local], full)
        return mine, full

    for event in events:
        if builder.add(event):
            continue
        batch.append(builder.finish())
        builder = data_packing.PackBuilder(spec)
        if not builder.add(event):
            raise ValueError(f"event {event['event_id']} does not fit an empty pack {spec}.")
        if len(batch) == packs_per_batch:
            yield emit(batch)
            batch = []
    if builder.num_events:
        batch.append(builder.finish())
    if batch:
        yield emit(batch)
