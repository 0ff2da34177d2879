"""grain pipelines: per-process slices form the single-process batches; resumable; eval padding."""

import numpy as np
import pytest

from jaxlab.data import pipeline


def _records(n):
    return [{"id": np.int32(i), "x": np.float32(i) * np.ones(2, np.float32)} for i in range(n)]


def test_process_slices_stack_to_the_single_process_batches():
    source = _records(37)
    single = pipeline.train_iterator(
        source, global_batch_size=8, seed=3, process_index=0, process_count=1
    )
    parts = [
        pipeline.train_iterator(
            source, global_batch_size=8, seed=3, process_index=p, process_count=4
        )
        for p in range(4)
    ]
    for _ in range(12):  # crosses epoch boundaries (37 records, 8 per batch)
        want = next(single)["id"]
        got = np.concatenate([next(it)["id"] for it in parts])
        np.testing.assert_array_equal(got, want)


def test_epochs_are_permutations_and_reshuffled():
    source = _records(16)
    it = pipeline.train_iterator(source, global_batch_size=4, seed=0, process_count=1)
    epoch1 = np.concatenate([next(it)["id"] for _ in range(4)])
    epoch2 = np.concatenate([next(it)["id"] for _ in range(4)])
    assert sorted(epoch1) == list(range(16)) and sorted(epoch2) == list(range(16))
    assert not np.array_equal(epoch1, epoch2)


def test_restored_iterator_continues_the_same_sequence():
    source = _records(20)
    it = pipeline.train_iterator(source, global_batch_size=4, seed=1, process_count=1)
    for _ in range(7):
        next(it)
    saved = it.get_state()
    expected = [next(it)["id"] for _ in range(6)]
    fresh = pipeline.train_iterator(source, global_batch_size=4, seed=1, process_count=1)
    fresh.set_state(saved)
    for want in expected:
        np.testing.assert_array_equal(next(fresh)["id"], want)


def test_too_small_dataset_and_bad_process_split_are_clear_errors():
    with pytest.raises(ValueError, match="fewer than one global batch"):
        pipeline.train_iterator(_records(3), global_batch_size=4, seed=0, process_count=1)
    with pytest.raises(ValueError, match="divide by the process count"):
        pipeline.train_iterator(_records(30), global_batch_size=6, seed=0, process_count=4)


def test_eval_batches_cover_each_record_once_with_static_shapes():
    source = _records(11)
    seen = []
    for process in range(2):
        for batch, valid in pipeline.eval_batches(
            source, global_batch_size=4, process_index=process, process_count=2
        ):
            assert batch["id"].shape == (2,) and valid.shape == (2,)
            seen.extend(batch["id"][valid].tolist())
    assert sorted(seen) == list(range(11))


def test_random_transform_is_independent_of_process_count_and_resumes():
    def jitter(record, rng):
        return {**record, "noise": rng.normal(size=2).astype(np.float32)}

    source = _records(24)

    def make(process_index=0, process_count=1):
        return pipeline.train_iterator(
            source,
            global_batch_size=6,
            seed=5,
            random_transform=jitter,
            process_index=process_index,
            process_count=process_count,
        )

    single = make()
    parts = [make(p, 3) for p in range(3)]
    for _ in range(6):
        want = next(single)["noise"]
        got = np.concatenate([next(it)["noise"] for it in parts])
        np.testing.assert_array_equal(got, want)
    state = single.get_state()
    expected = next(single)["noise"]
    restored = make()
    restored.set_state(state)
    np.testing.assert_array_equal(next(restored)["noise"], expected)
    # Different epochs see the same record with different noise.
    it = make()
    seen = {}
    for _ in range(8):
        batch = next(it)
        for i, noise in zip(batch["id"], batch["noise"], strict=True):
            seen.setdefault(int(i), []).append(noise)
    assert any(len(v) > 1 and not np.array_equal(v[0], v[1]) for v in seen.values())
