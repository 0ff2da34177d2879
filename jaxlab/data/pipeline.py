"""grain pipelines shared by the tasks: per-process slices of global batches, checkpointable.

The global record order depends only on the seed: records are shuffled (afresh each epoch) and cut
into global batches of `global_batch_size`. Process p of P reads rows [p*b, (p+1)*b) of each global
batch, b = global_batch_size / P, which is the slice its devices hold once `mesh.global_batch`
assembles the global array. So the batches, and the trained parameters, do not depend on how many
processes share the work, and an iterator restored from a checkpoint continues the same sequence.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import grain
import jax
import numpy as np


class ProcessSlice(grain.MapDataset):
    """Records of this process's rows of every global batch, in order (a lazy index remap)."""

    def __init__(
        self, parent: grain.MapDataset, global_batch_size: int, process_index: int, count: int
    ):
        super().__init__(parent)
        if global_batch_size % count:
            raise ValueError(
                f"global batch size {global_batch_size} must divide by the process count {count}."
            )
        self._global = global_batch_size
        self._local = global_batch_size // count
        self._offset = process_index * self._local
        self._count = count

    def __len__(self) -> int:
        return len(self._parent) // self._count

    def __getitem__(self, index):
        if isinstance(index, slice):
            return self.slice(index)
        batch, row = divmod(index, self._local)
        return self._parent[batch * self._global + self._offset + row]

    def __str__(self) -> str:
        return f"ProcessSlice(global={self._global}, local={self._local}, offset={self._offset})"


def train_iterator(
    source: Any,
    *,
    global_batch_size: int,
    seed: int,
    transform: Callable[[Any], Any] | None = None,
    random_transform: Callable[[Any, np.random.Generator], Any] | None = None,
    process_index: int | None = None,
    process_count: int | None = None,
    num_threads: int = 2,
    prefetch: int = 4,
) -> grain.DatasetIterator:
    """An endless, epoch-reshuffled iterator of this process's numpy batches [B_local, ...].

    Args:
      source: random-access records (`__len__` / `__getitem__`, e.g. a task's reader).
      transform: deterministic per-record function (decoding, normalisation).
      random_transform: `(record, rng) -> record` for random augmentation. The generator is
        seeded by the record's position in the global stream, so augmentations are the same for
        any process count and after a restore (bitwise-identical resumed runs).
    Returns a grain iterator whose `get_state` / `set_state` the checkpoint saves and restores.
    """
    process_index = jax.process_index() if process_index is None else process_index
    process_count = jax.process_count() if process_count is None else process_count
    if len(source) < global_batch_size:
        raise ValueError(
            f"The training set has {len(source)} records, fewer than one global batch "
            f"({global_batch_size}); lower the batch size or add data."
        )
    ds = grain.MapDataset.source(source).shuffle(seed=seed).repeat(None)
    # Lazy: the transforms run only on the records this process's slice reads.
    if transform is not None:
        ds = ds.map(transform)
    if random_transform is not None:
        ds = ds.random_map(random_transform, seed=seed + 1)
    ds = ProcessSlice(ds, global_batch_size, process_index, process_count)
    ds = ds.batch(global_batch_size // process_count, drop_remainder=True)
    options = grain.ReadOptions(num_threads=num_threads, prefetch_buffer_size=prefetch)
    return iter(ds.to_iter_dataset(options))


def eval_batches(
    source: Any,
    *,
    global_batch_size: int,
    transform: Callable[[Any], Any] | None = None,
    process_index: int | None = None,
    process_count: int | None = None,
) -> Iterator[tuple[Any, np.ndarray]]:
    """One ordered pass over `source` in full-size batches: yields (batch, valid [B_local] bool).

    The last global batch is padded by repeating record 0 and marking the copies invalid, so every
    batch has the same static shape (one compilation) and metrics weight each record once.
    """
    process_index = jax.process_index() if process_index is None else process_index
    process_count = jax.process_count() if process_count is None else process_count
    local = global_batch_size // process_count
    n = len(source)
    num_batches = -(-n // global_batch_size)
    for b in range(num_batches):
        start = b * global_batch_size + process_index * local
        indices = np.arange(start, start + local)
        valid = indices < n
        records = [source[int(i) if ok else 0] for i, ok in zip(indices, valid, strict=True)]
        if transform is not None:
            records = [transform(r) for r in records]
        yield stack(records), valid


def stack(records: list[Any]) -> Any:
    """List of record pytrees -> pytree of stacked numpy arrays [N, ...]."""
    return jax.tree.map(lambda *xs: np.stack(xs), *records)
