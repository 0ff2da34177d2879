"""The block-vectorised processing, first-fit and packing equal the old per-event code bit for bit
(`reference_packing.py`), on varied events; the train iterator's batches equal the old iterator's,
resume exactly mid-block, and are the same with worker processes."""

import json

import numpy as np
import pytest

from jaxlab.configs import neutrino as neutrino_config
from jaxlab.neutrino import data, data_packing, data_pipeline, predict, synthetic

from . import reference_packing as ref

NUM_SENSORS = 40


def _random_events(seed: int, count: int) -> list[dict]:
    """Raw records with what the rules must handle: several pulses per DOM (a small detector),
    equal times and charges (tie-breaks), auxiliary pulses, time-sorted and unsorted events."""
    gen = np.random.default_rng(seed)
    events = []
    for i in range(count):
        n = int(gen.choice([1, 2, 5, 20, 60, 150]))
        time = gen.integers(0, 40, n).astype(np.float64) * 7.5 + 9000.0
        if i % 3:
            time = np.sort(time)  # as in the Kaggle files (the fast sort)
        events.append(
            {
                "sensor_id": gen.integers(0, NUM_SENSORS, n).astype(np.int64),
                "time": time,
                "charge": gen.choice([0.25, 1.0, 1.0, 3.5], n).astype(np.float64),
                "auxiliary": gen.uniform(size=n) < 0.3,
                "event_id": np.int64(1000 + i),
                "azimuth": np.float64(gen.uniform(0, 2 * np.pi)),
                "zenith": np.float64(gen.uniform(0, np.pi)),
            }
        )
    return events


def _geometry() -> np.ndarray:
    return np.random.default_rng(7).uniform(-500, 500, (NUM_SENSORS, 3)).astype(np.float32)


def _assert_same(got: dict, want: dict, where: str = "") -> None:
    assert sorted(got) == sorted(want), where
    for key in want:
        a, b = np.asarray(got[key]), np.asarray(want[key])
        assert a.dtype == b.dtype and a.shape == b.shape, (where, key, a.dtype, b.dtype)
        np.testing.assert_array_equal(a, b, err_msg=f"{where} {key}")


@pytest.mark.parametrize("max_doms, max_pulses_per_dom", [(5, 3), (12, 1), (64, 16)])
def test_block_processing_equals_the_per_event_reference(max_doms, max_pulses_per_dom):
    events = _random_events(0, 90)
    geometry = _geometry()
    new = data_packing.EventProcessor(geometry, max_doms, max_pulses_per_dom)
    old = ref.EventProcessor(geometry, max_doms, max_pulses_per_dom)
    block = new.block(data.raw_block(events))
    truncated = 0
    for i, event in enumerate(events):
        want = old(event)
        _assert_same(data_packing.event_record(block, i), want, f"event {i}")
        _assert_same(new(event), want, f"event {i} alone")
        truncated += int(want["doms_truncated"]) + int(want["pulses_truncated"])
    assert truncated > 0 or max_pulses_per_dom == 16  # the caps were exercised


def _naive_first_fit(sizes, num_rows, row_len):
    """Item by item: the first row with room, else none (and the item takes nothing)."""
    fill, count = [0] * num_rows, [0] * num_rows
    out = []
    for n in sizes:
        r = next((r for r in range(num_rows) if fill[r] + n <= row_len), None)
        if r is None:
            out.append((num_rows, 0, 0))
            continue
        out.append((r, fill[r], count[r]))
        fill[r] += n
        count[r] += 1
    return out


@pytest.mark.parametrize("seed", range(6))
def test_first_fit_equals_item_by_item_placement(seed):
    gen = np.random.default_rng(seed)
    max_size = int(gen.choice([1, 4, 16, 40]))
    sizes = gen.integers(1, max_size + 1, int(gen.integers(1, 300)))
    num_rows, row_len = int(gen.integers(1, 9)), int(gen.integers(max_size, 3 * max_size + 5))
    row, offset, rank = data_packing.first_fit(sizes, num_rows, row_len)
    want = np.array(_naive_first_fit(sizes.tolist(), num_rows, row_len)).reshape(-1, 3)
    np.testing.assert_array_equal(np.stack([row, offset, rank], 1), want)


@pytest.mark.parametrize(
    "spec",
    [
        data_packing.PackSpec(4, 12, 2, 6, 5),  # tight: every limit closes some packs
        data_packing.PackSpec(3, 16, 4, 8, 3),  # few event slots
        data_packing.PackSpec(8, 6, 1, 16, 40),  # one DOM row, short pulse rows
    ],
)
def test_packs_equal_the_per_event_reference(spec):
    processor = data_packing.EventProcessor(_geometry(), max_doms=5, max_pulses_per_dom=3)
    events = [processor(e) for e in _random_events(1, 120)]
    want = ref.pack_events(events, spec)
    got = data_packing.pack_events(events, spec)
    assert len(got) == len(want) > 10
    for i, (a, b) in enumerate(zip(got, want, strict=True)):
        _assert_same(a, b, f"pack {i}")
    # Streamed in uneven blocks, the closed packs are the same.
    packer, streamed = data_packing.Packer(spec), []
    for start in range(0, len(events), 17):
        packer.extend(data_packing.events_block(events[start : start + 17]))
        while (pack := packer.next_pack()) is not None:
            streamed.append(pack)
    while (pack := packer.next_pack(final=True)) is not None:
        streamed.append(pack)
    for i, (a, b) in enumerate(zip(streamed, want, strict=True)):
        _assert_same(a, b, f"streamed pack {i}")


def test_an_event_too_big_for_an_empty_pack_is_an_error():
    processor = data_packing.EventProcessor(_geometry(), max_doms=5, max_pulses_per_dom=3)
    events = [processor(e) for e in _random_events(2, 10)]
    with pytest.raises(ValueError, match=r"event \d+ does not fit an empty pack"):
        data_packing.pack_events(events, data_packing.PackSpec(1, 3, 1, 8, 4))


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("icecube"))
    config = neutrino_config.get_config("tiny")
    config.data.root = path
    config.data.synth.events_per_batch = 90
    data.prepare(config, "unused")
    return path


def _pipeline(root):
    config = neutrino_config.get_config("tiny")
    config.data.root = root
    config.data.max_doms = 6  # truncation happens
    source = data.IceCubeSource(root, "train", (1, 2))
    processor = data_packing.make_processor(config, root)
    return source, processor, data_packing.PackSpec.from_config(config)


def _train(root, process_index=0, process_count=1, **kwargs):
    source, processor, spec = _pipeline(root)
    return data_pipeline.train_iterator(
        source,
        processor,
        spec,
        packs_per_batch=4,
        seed=5,
        process_index=process_index,
        process_count=process_count,
        **kwargs,
    )


@pytest.mark.parametrize("process_index, process_count", [(0, 1), (1, 2)])
def test_train_batches_equal_the_old_iterator_across_blocks_and_epochs(
    root, process_index, process_count
):
    source, processor, spec = _pipeline(root)
    old = ref.EventProcessor(processor.geometry, processor.max_doms, processor.max_pulses_per_dom)
    want = ref.reference_batches(
        source,
        old,
        spec,
        packs_per_batch=4,
        seed=5,
        process_index=process_index,
        process_count=process_count,
    )
    got = _train(root, process_index, process_count, block_events=7)
    events = 0
    for i in range(12):
        batch = next(got)
        _assert_same(batch, next(want), f"batch {i}")
        events += int(batch["event_valid"].sum())
    assert events > 1.5 * len(source) / process_count  # past an epoch boundary


def test_train_iterator_resumes_bitwise_inside_a_block(root):
    it = _train(root, block_events=50)
    for _ in range(3):
        next(it)
    states, want = [], []
    for _ in range(5):
        states.append(json.loads(json.dumps(it.get_state())))  # as the checkpoint stores it
        want.append([next(it) for _ in range(3)])
    assert any(s["skip"] for s in states)  # some resumes start inside a block
    for state, batches in zip(states, want, strict=True):
        resumed = _train(root, block_events=50)
        resumed.set_state(state)
        for a, b in zip([next(resumed) for _ in range(3)], batches, strict=True):
            _assert_same(a, b)


def test_raw_blocks_gathered_from_files_equal_the_records_stacked(root):
    source, _, _ = _pipeline(root)
    indices = np.random.default_rng(0).permutation(len(source))[:70]  # both files, any order
    _assert_same(source.raw_block(indices), data.raw_block([source[int(i)] for i in indices]))
    columns = data.read_pulses(synthetic.batch_path(root, "train", 2), 5160)
    events = predict.FileEvents(columns, *predict.event_runs(columns))
    indices = np.arange(5, 60)
    _assert_same(events.raw_block(indices), data.raw_block([events[int(i)] for i in indices]))


def test_eval_batches_pack_the_split_in_order_like_the_reference(root):
    source, processor, spec = _pipeline(root)
    old = ref.EventProcessor(processor.geometry, processor.max_doms, processor.max_pulses_per_dom)
    want = ref.pack_events([old(source[i]) for i in range(len(source))], spec)
    got = [
        pack
        for _, full in data_pipeline.eval_batches(
            source, processor, spec, packs_per_batch=4, process_index=0, process_count=1
        )
        for pack in ({k: v[g] for k, v in full.items()} for g in range(4))
    ]
    assert len(got) >= len(want) and not any(p["event_valid"].any() for p in got[len(want) :])
    for i, (a, b) in enumerate(zip(got, want, strict=False)):
        _assert_same(a, b, f"pack {i}")


@pytest.mark.slow
def test_worker_processes_give_the_same_batches_and_resume_with_any_count(root):
    want = _train(root, block_events=16)
    got = _train(root, block_events=16, workers=2)
    for i in range(6):
        _assert_same(next(got), next(want), f"batch {i}")
    state = json.loads(json.dumps(got.get_state()))
    assert state == want.get_state()  # the state does not depend on the worker count
    expected = [next(want) for _ in range(3)]
    for workers in (2, 0):
        resumed = _train(root, block_events=16, workers=workers)
        resumed.set_state(state)
        for a, b in zip([next(resumed) for _ in range(3)], expected, strict=True):
            _assert_same(a, b, f"resumed with {workers} workers")
