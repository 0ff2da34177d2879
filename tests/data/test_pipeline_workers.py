"""Worker processes of the train iterator: the same batches for any worker count, a position that
resumes under another worker count, `data.workers` parsing, and bitwise resume after kill -9."""

import os
import signal
import time

import numpy as np
import pytest

from jaxlab.configs import common
from jaxlab.core.writer import read_metrics
from jaxlab.data import pipeline
from tests.core import scripts_util


def _records(n):
    return [{"id": np.int32(i), "x": np.full(3, i, np.float32)} for i in range(n)]


def _jitter(record, rng):
    return {**record, "noise": rng.normal(size=3).astype(np.float32)}


def _iterator(workers, process_index=0, process_count=1):
    return pipeline.train_iterator(
        _records(29),
        global_batch_size=6,
        seed=5,
        transform=lambda r: {**r, "x": r["x"] * 2},
        random_transform=_jitter,
        process_index=process_index,
        process_count=process_count,
        workers=workers,
    )


def _assert_same(got, want):
    assert got.keys() == want.keys()
    for key in want:
        np.testing.assert_array_equal(got[key], want[key], err_msg=key)


def test_batches_and_positions_are_the_same_for_0_1_and_2_workers():
    num_batches = 11  # crosses two epoch boundaries (29 records, 6 a batch)
    reference = _iterator(0)
    want = [next(reference) for _ in range(num_batches)]
    ids = np.concatenate([b["id"] for b in want[:4]])
    assert sorted(ids) == sorted(set(ids.tolist()))  # an epoch's batches: no record twice
    saved = None
    for workers in (1, 2):
        it = _iterator(workers)
        try:
            for step, batch in enumerate(want):
                _assert_same(next(it), batch)
                assert it.get_state() == {"next_index": step + 1}
                if workers == 2 and step == 3:
                    saved = it.get_state()
        finally:
            it.close()

    # A position saved with 2 workers resumes in-process and with 2 workers (the state is the
    # batch index, whatever the count): the same continuation.
    for workers in (0, 2):
        resumed = _iterator(workers)
        resumed.set_state(saved)
        resumed.start_prefetch()  # as the checkpoint handler does after set_state
        try:
            for batch in want[4:8]:
                _assert_same(next(resumed), batch)
        finally:
            resumed.close()


def test_process_slices_with_workers_stack_to_the_single_process_batches():
    single = _iterator(0)
    # Process 0 reads with a worker, process 1 in-process: the worker count is per process.
    parts = [_iterator(1 - p, process_index=p, process_count=2) for p in range(2)]
    try:
        for _ in range(5):
            want = next(single)
            got = [next(it) for it in parts]
            np.testing.assert_array_equal(np.concatenate([g["id"] for g in got]), want["id"])
            np.testing.assert_array_equal(np.concatenate([g["noise"] for g in got]), want["noise"])
    finally:
        for it in parts:
            it.close()


def test_state_from_bytes_and_bad_state_is_a_clear_error():
    it = _iterator(0)
    it.set_state(b'{"next_index": 3}')  # what grain's handler reads for a non-grain iterator
    assert it.get_state() == {"next_index": 3}
    with pytest.raises(ValueError, match="next_index"):
        it.set_state({"position": 3})


def test_workers_config_values(monkeypatch):
    config = common.get_common()
    config.data = common.input_workers(common.ml_collections.ConfigDict())
    assert pipeline.resolve_workers(config) == 0
    config.data.workers = 3
    assert pipeline.resolve_workers(config) == 3
    config.data.workers = "auto"  # the same field takes "auto" (--config.data.workers=auto)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(12)))
    assert pipeline.resolve_workers(config) == 11  # every CPU but one
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0})
    assert pipeline.resolve_workers(config) == 1
    for bad in (-1, "many", 1.5, True):
        config.data.workers = bad
        with pytest.raises(ValueError, match="config.data.workers"):
            pipeline.resolve_workers(config)


def _worker_pids(pid):
    """Child processes of `pid` (grain's spawned workers and their helpers)."""
    out = []
    for task in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{task}/children") as f:
                out += [int(c) for c in f.read().split()]
        except FileNotFoundError:  # a thread that ended since the listing has no children
            continue
    return out


def _alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with open(f"/proc/{pid}/stat") as f:
        return f.read().split()[2] != "Z"


def _train_rows(workdir):
    rows = [m for m in read_metrics(workdir) if "data_checksum" in m]
    return {m["step"]: m for m in rows}, [m["step"] for m in rows]


@pytest.mark.slow  # three training runs in subprocesses, each starting worker processes
def test_kill_9_with_workers_resumes_bitwise(tmp_path):
    overrides = (
        "--config.train.num_steps=120",
        "--config.train.log_every=1",
        "--config.train.ckpt_every=40",
        "--config.train.eval_every=0",
    )
    reference, killed = str(tmp_path / "reference"), str(tmp_path / "killed")
    # The reference reads in-process: the batches must not depend on the worker count.
    result = scripts_util.run("train.py", "example.py:tiny", reference, *overrides, num_devices=1)
    assert result.returncode == 0, result.stdout[-3000:]

    workers = "--config.data.workers=2"
    process = scripts_util.start(
        "train.py", "example.py:tiny", killed, *overrides, workers, num_devices=1
    )
    committed = os.path.join(killed, "checkpoints", "40")
    deadline = time.time() + 300
    while time.time() < deadline and process.poll() is None:
        if os.path.isdir(committed) and len(read_metrics(killed)) >= 50:
            break
        time.sleep(0.02)
    assert process.poll() is None, process.communicate()[0][-3000:]
    children = _worker_pids(process.pid)
    assert len(children) >= 2, children  # the two reader processes are running
    process.send_signal(signal.SIGKILL)
    process.communicate(timeout=60)
    deadline = time.time() + 30  # orphaned workers notice their parent is gone and exit
    while time.time() < deadline and any(_alive(c) for c in children):
        time.sleep(0.2)
    assert not [c for c in children if _alive(c)], "worker processes outlived kill -9"

    result = scripts_util.run(
        "train.py", "example.py:tiny", killed, *overrides, workers, num_devices=1
    )
    assert result.returncode == 0, result.stdout[-3000:]
    assert "Restored step 40" in result.stdout

    want, _ = _train_rows(reference)
    got, order = _train_rows(killed)
    assert order == list(range(1, 121))  # one record per step, in order
    for step in order:
        assert got[step]["loss"] == want[step]["loss"], step
        assert got[step]["data_checksum"] == want[step]["data_checksum"], step
