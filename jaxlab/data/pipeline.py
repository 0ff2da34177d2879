"""grain pipelines shared by the tasks: per-process slices of global batches, checkpointable.

The global record order depends only on the seed: records are shuffled (afresh each epoch) and cut
into global batches of `global_batch_size`. Process p of P reads rows [p*b, (p+1)*b) of each global
batch, b = global_batch_size / P, which is the slice its devices hold once `mesh.global_batch`
assembles the global array. So the batches, and the trained parameters, do not depend on how many
processes share the work, and an iterator restored from a checkpoint continues the same sequence.

Worker processes (`config.data.workers`, `resolve_workers`): with W > 0, grain's `mp_prefetch`
starts W processes; worker w builds batches w, w + W, w + 2W, ... of the same batch sequence and
the main process takes them in turn, so the batches do not depend on W either. The iterator's
checkpoint state is the index of the next batch, `{"next_index": k}`, for every W (the state
in-process grain iterators have always had): a run may resume with another worker count.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import grain
import jax
import ml_collections
import numpy as np
from absl import flags

# Batches each worker process keeps ready (grain's per-worker buffer): two hide the hand-over.
WORKER_BUFFER = 2
PARENT_POLL_S = 1.0  # how often a worker checks that the training process is still there


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
    workers: int = 0,
) -> BatchIterator:
    """An endless, epoch-reshuffled iterator of this process's numpy batches [B_local, ...].

    Args:
      source: random-access records (`__len__` / `__getitem__`, e.g. a task's reader).
      transform: deterministic per-record function (decoding, normalisation).
      random_transform: `(record, rng) -> record` for random augmentation. The generator is
        seeded by the record's position in the global stream, so augmentations are the same for
        any process count and after a restore (bitwise-identical resumed runs).
      num_threads, prefetch: grain's read threads and buffered batches (in each worker process
        when `workers` > 0).
      workers: worker processes (0: read in this process); see `resolve_workers`.
    Returns a `BatchIterator` whose `get_state` / `set_state` the checkpoint saves and restores.
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
    return BatchIterator(ds, options, workers)


def auto_workers() -> int:
    """Worker processes for `data.workers = "auto"`: every CPU this process may run on but one
    (left to the training loop: dispatch, host-to-device copies, checkpoints), at least 1."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cpus = os.cpu_count() or 1
    return max(1, cpus - 1)


def resolve_workers(config: ml_collections.ConfigDict) -> int:
    """`config.data.workers` as a process count (`worker_count`); 0 for a config without it."""
    return worker_count(config.data.get("workers", 0))


def worker_count(value: Any) -> int:
    """A `data.workers` value as a process count: an int >= 0 as is, "auto" from the CPU count."""
    if isinstance(value, str) and value.strip().lower() == "auto":
        return auto_workers()
    try:
        workers = int(value)
    except (TypeError, ValueError):
        workers = -1
    if workers < 0 or isinstance(value, bool | float):
        raise ValueError(
            f"config.data.workers = {value!r}; expected a number of worker processes >= 0 "
            "(0 reads in the training process) or 'auto'."
        )
    return workers


def with_workers(ds: grain.IterDataset, workers: int) -> grain.IterDataset:
    """`ds` read by `workers` processes (grain's `mp_prefetch`); `ds` itself for 0.

    Worker w reads elements w, w + W, ... of `ds`'s map-dataset parent and the main process
    interleaves them in order, so the elements are those of `ds` for any W. The dataset is
    pickled into freshly spawned processes: its source must pickle (no open file handles).
    """
    if workers <= 0:
        return ds
    if not flags.FLAGS.is_parsed():  # grain reads its absl flags; outside an absl app (a
        flags.FLAGS.mark_as_parsed()  # notebook, pytest) their defaults apply
    options = grain.MultiprocessingOptions(
        num_workers=workers, per_worker_buffer_size=WORKER_BUFFER
    )
    return ds.mp_prefetch(options, worker_init_fn=exit_with_parent)


def exit_with_parent(worker_index: int, worker_count: int) -> None:
    """Worker init: a thread that ends this worker once its parent has gone.

    grain's workers stop when the training process closes the iterator, but a training process
    killed by SIGKILL (kill -9, an out-of-memory kill) cannot tell them, and they would wait
    forever on their full buffers, holding memory and the parent's stdout. The parent's id is
    polled every `PARENT_POLL_S` seconds (PR_SET_PDEATHSIG would fire when the thread that started
    the worker ends, which in grain is not the training process ending).
    """
    del worker_index, worker_count
    parent = os.getppid()

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(PARENT_POLL_S)
        os._exit(1)

    threading.Thread(target=watch, name="exit_with_parent", daemon=True).start()


class BatchIterator:
    """The batches of a batched `grain.MapDataset` from a position, read by `workers` processes.

    State: `{"next_index": k}`, the index of the next batch, whatever the worker count. Setting
    it drops the current readers (and their processes); the next batch restarts them at k. The
    checkpoint handler calls `set_state` then `start_prefetch`.
    """

    def __init__(self, batches: grain.MapDataset, options: grain.ReadOptions, workers: int):
        self._batches, self._options, self._workers = batches, options, int(workers)
        self._next = 0
        self._it: Any = None

    @property
    def workers(self) -> int:
        return self._workers

    def _start(self) -> None:
        batches = self._batches[self._next :] if self._next else self._batches
        self._it = iter(with_workers(batches.to_iter_dataset(self._options), self._workers))

    def start_prefetch(self) -> None:
        """Starts the readers (and worker processes) now rather than at the first batch."""
        if self._it is None:
            self._start()
        start = getattr(self._it, "start_prefetch", None)
        if callable(start):
            start()

    def __iter__(self) -> BatchIterator:
        return self

    def __next__(self) -> Any:
        if self._it is None:
            self._start()
        batch = next(self._it)
        self._next += 1
        return batch

    def get_state(self) -> dict[str, int]:
        return {"next_index": self._next}

    def set_state(self, state: dict[str, Any] | bytes | str) -> None:
        if isinstance(state, bytes | str):
            state = json.loads(state)
        if not isinstance(state, dict) or "next_index" not in state:
            raise ValueError(
                f"data iterator state {state!r}: expected {{'next_index': <batch index>}}."
            )
        self.close()
        self._next = int(state["next_index"])

    def close(self) -> None:
        """Stops the readers; worker processes exit. The position is kept."""
        if self._it is not None:
            close = getattr(self._it, "close", None)
            if callable(close):
                close()
            self._it = None


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
