"""Reader of the Kaggle layout, malformed files, DOM grouping, packing and exact resume."""

import os
import shutil

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from jaxlab.configs import neutrino as neutrino_config
from jaxlab.neutrino import data, data_packing, data_pipeline, synthetic


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("icecube"))
    config = neutrino_config.get_config("tiny")
    config.data.root = path
    config.data.synth.events_per_batch = 120
    data.prepare(config, "unused")
    return path


def _config(root):
    config = neutrino_config.get_config("tiny")
    config.data.root = root
    return config


def _copy(root, tmp_path):
    dst = str(tmp_path / "copy")
    shutil.copytree(root, dst)
    return dst


def test_layout_geometry_and_dtypes(root):
    for name in ("sensor_geometry.csv", "train_meta.parquet", "test_meta.parquet"):
        assert os.path.exists(os.path.join(root, name))
    schema = pq.read_schema(synthetic.batch_path(root, "train", 1))
    assert schema.field("sensor_id").type == pa.int16()
    assert schema.field("time").type == pa.int64()
    assert schema.field("charge").type == pa.float64()
    assert schema.field("auxiliary").type == pa.bool_()
    assert "azimuth" not in pq.read_schema(synthetic.meta_path(root, "test")).names

    xyz = data.read_geometry(root)
    assert xyz.shape == (5160, 3)
    strings = np.unique(xyz[:, :2].round(2), axis=0)
    assert len(strings) == 86
    distances = np.linalg.norm(strings[:, None] - strings[None], axis=-1)
    np.fill_diagonal(distances, np.inf)
    np.testing.assert_allclose(distances.min(axis=1), 125.0, atol=0.05)  # hexagonal grid
    np.testing.assert_allclose(np.diff(xyz[:60, 2]), -17.0, atol=0.01)


def test_reader_pulse_counts_match_meta_indices(root):
    source = data.IceCubeSource(root, "train", (1, 2))
    meta = pq.read_table(synthetic.meta_path(root, "train")).to_pydict()
    assert len(source) == sum(b in (1, 2) for b in meta["batch_id"])
    table = pq.read_table(synthetic.batch_path(root, "train", 2)).to_pydict()
    ids, counts = np.unique(np.asarray(table["event_id"]), return_counts=True)
    per_file = dict(zip(ids.tolist(), counts.tolist(), strict=True))
    for i in range(len(source)):
        event = source[i]
        expected = source.meta["last_pulse_index"][i] - source.meta["first_pulse_index"][i] + 1
        assert len(event["time"]) == expected
        if int(event["batch_id"]) == 2:
            assert len(event["time"]) == per_file[int(event["event_id"])]
    assert np.all(np.diff(source[0]["time"]) >= 0)  # time-ordered within an event
    assert not data.IceCubeSource(root, "test").has_labels


def test_missing_column_is_a_clear_error(root, tmp_path):
    copy = _copy(root, tmp_path)
    path = synthetic.batch_path(copy, "train", 1)
    pq.write_table(pq.read_table(path).drop(["charge"]), path)
    source = data.IceCubeSource(copy, "train", (1,))
    with pytest.raises(ValueError, match=r"batch_1\.parquet: missing column\(s\) \['charge'\]"):
        source[0]
    meta = synthetic.meta_path(copy, "train")
    pq.write_table(pq.read_table(meta).drop(["last_pulse_index"]), meta)
    with pytest.raises(ValueError, match=r"train_meta\.parquet: missing column.*last_pulse_index"):
        data.IceCubeSource(copy, "train")
    with pytest.raises(FileNotFoundError, match="sensor_geometry.csv"):
        os.remove(synthetic.geometry_path(copy))
        data.read_geometry(copy)


def test_index_out_of_range_is_a_clear_error(root, tmp_path):
    copy = _copy(root, tmp_path)
    meta_path = synthetic.meta_path(copy, "train")
    meta = pq.read_table(meta_path).to_pydict()
    last = [i for i, b in enumerate(meta["batch_id"]) if b == 1][-1]
    meta["last_pulse_index"][last] += 5
    pq.write_table(pa.table(meta), meta_path)
    source = data.IceCubeSource(copy, "train", (1,))
    with pytest.raises(
        ValueError, match=r"batch_1\.parquet: has \d+ rows, .*\(last_pulse_index out of range\)"
    ):
        source[last]
    meta["first_pulse_index"][0] = meta["last_pulse_index"][0] + 1
    pq.write_table(pa.table(meta), meta_path)
    with pytest.raises(ValueError, match="expected 0 <= first <= last"):
        data.IceCubeSource(copy, "train", (1,))


def test_sensor_id_out_of_range_is_a_clear_error(root, tmp_path):
    copy = _copy(root, tmp_path)
    path = synthetic.batch_path(copy, "train", 1)
    table = pq.read_table(path).to_pydict()
    table["sensor_id"][0] = 5160
    schema = pq.read_schema(path)
    pq.write_table(pa.table(table, schema=schema), path)
    source = data.IceCubeSource(copy, "train", (1,))
    with pytest.raises(
        ValueError,
        match=r"batch_1\.parquet: column 'sensor_id' holds 1 values outside 0..5159 .* e\.g\. 5160"
        r" \(first in event_id \d+\)",
    ):
        source[0]


def test_real_data_without_root_is_a_clear_error():
    config = neutrino_config.get_config("paper")
    assert config.data.root == "" and not config.data.synthetic
    with pytest.raises(ValueError, match=r"config.data.root is empty.*sensor_geometry.csv"):
        data.prepare(config, "unused")


def test_processor_groups_by_dom_and_truncates_by_the_documented_rule():
    geometry = np.arange(30, dtype=np.float32).reshape(10, 3)
    event = {
        # DOM 3: 5 pulses; DOM 7: 2 pulses (one auxiliary); DOM 1: 1 auxiliary pulse.
        "sensor_id": np.array([3, 7, 3, 3, 1, 3, 7, 3]),
        "time": np.array([10.0, 11, 12, 5, 13, 20, 4, 1]),
        "charge": np.array([1.0, 2, 1, 1, 9, 1, 5, 1]),
        "auxiliary": np.array([0, 0, 0, 0, 1, 0, 1, 0], bool),
        "event_id": 5,
        "azimuth": 0.0,
        "zenith": 0.0,
    }
    out = data_packing.EventProcessor(geometry, max_doms=2, max_pulses_per_dom=3)(event)
    # Kept: DOM 3 (clean charge 5) and DOM 7 (clean charge 2), not DOM 1 (auxiliary only).
    np.testing.assert_allclose(out["dom_features"][:, 3] * 5160, [3, 7], atol=1e-3)
    np.testing.assert_array_equal(out["dom_lengths"], [3, 2])
    times = out["pulses"][:, 0] * 3e4 + 1e4
    np.testing.assert_allclose(times, [1, 5, 10, 4, 11], atol=1e-2)  # earliest 3 of DOM 3
    assert int(out["pulses_truncated"]) == 3 and int(out["doms_truncated"]) == 1
    assert int(out["num_pulses"]) == 8 and int(out["num_doms"]) == 3
    np.testing.assert_allclose(out["dom_features"][0, :3], geometry[3] / 500)
    want_charge = np.log10(np.array([1, 1, 1, 5, 2]) + 1e-8) / 3
    np.testing.assert_allclose(out["pulses"][:, 1], want_charge, atol=1e-6)
    np.testing.assert_array_equal(out["pulses"][:, 2], [0, 0, 0, 1, 0])
    np.testing.assert_allclose(out["direction"], [0, 0, 1], atol=1e-7)


def _events(root, config, count=None):
    source = data.IceCubeSource(root, "train", (1, 2))
    processor = data_packing.make_processor(config, root)
    return [processor(source[i]) for i in range(count or len(source))]


def test_packs_hold_every_pulse_once_with_consistent_ids(root):
    config = _config(root)
    spec = data_packing.PackSpec.from_config(config)
    events = _events(root, config, 60)
    packs = data_packing.pack_events(events, spec)
    assert sum(int(p["event_valid"].sum()) for p in packs) == 60
    e = 0
    for pack in packs:
        for slot in np.flatnonzero(pack["event_valid"]):
            event = events[e]
            assert pack["event_id"][slot] == event["event_id"]
            dom_slots = np.flatnonzero(pack["dom_event"].ravel() == slot)
            assert len(dom_slots) == len(event["dom_lengths"])
            # One event = one segment of one DOM row.
            rows = np.unique(dom_slots // spec.dom_row_len)
            assert len(rows) == 1 and len(np.unique(pack["dom_segment"].ravel()[dom_slots])) == 1
            got = []
            for j, d in enumerate(dom_slots):
                tokens = pack["pulse_dom"] == d
                assert tokens.sum() == event["dom_lengths"][j]
                row = np.flatnonzero(tokens.any(axis=1))
                assert len(row) == 1  # one DOM = one segment of one pulse row
                assert len(np.unique(pack["pulse_segment"][tokens])) == 1
                got.append(pack["pulse_features"][tokens])
                np.testing.assert_array_equal(
                    pack["dom_features"].reshape(-1, 4)[d], event["dom_features"][j]
                )
            np.testing.assert_array_equal(np.concatenate(got), event["pulses"])
            e += 1
        assert np.all((pack["pulse_segment"] > 0) == (pack["pulse_dom"] < spec.dom_tokens))

    # The logged packing statistics, against counts taken from the events themselves.
    stats = data_packing.packing_stats([{k: np.stack([p[k] for p in packs]) for k in packs[0]}])
    real_pulses = sum(len(event["pulses"]) for event in events)
    pulse_tokens = len(packs) * spec.pulse_rows * spec.pulse_row_len
    assert stats["pulse_token_efficiency"] == pytest.approx(real_pulses / pulse_tokens)
    real_doms = sum(len(event["dom_lengths"]) for event in events)
    assert stats["dom_token_efficiency"] == pytest.approx(
        real_doms / (len(packs) * spec.dom_tokens)
    )
    assert stats["events_per_pack"] == pytest.approx(60 / len(packs))
    assert stats["pulses_truncated"] == sum(int(event["pulses_truncated"]) for event in events)
    assert stats["pulses_truncated"] > 0


def test_padding_efficiency_on_long_tailed_sizes():
    """The demo's pack shapes on the synthetic long-tailed event sizes."""
    config = neutrino_config.get_config("demo")
    config.train.global_batch_size = 16
    spec = data_packing.PackSpec.from_config(config)
    stats = data_packing.packing_stats([data_packing.synthetic_batch(config, spec, 0)])
    assert stats["pulse_token_efficiency"] >= 0.9, stats
    assert stats["events_per_pack"] > 5


def _ids(batch):
    return batch["event_id"][batch["event_valid"]].tolist()


def test_train_iterator_resumes_exactly_and_reads_file_by_file(root):
    config = _config(root)
    source = data.IceCubeSource(root, "train", (1, 2))
    processor = data_packing.make_processor(config, root)
    spec = data_packing.PackSpec.from_config(config)

    def make():
        return data_pipeline.train_iterator(
            source, processor, spec, packs_per_batch=2, seed=3, process_count=1, process_index=0
        )

    it = make()
    first = [_ids(next(it)) for _ in range(7)]
    state = it.get_state()
    want = [_ids(next(it)) for _ in range(6)]
    resumed = make()
    resumed.set_state(state)
    assert [_ids(next(resumed)) for _ in range(6)] == want
    # The first epoch reads one batch file, then the other (events permuted within each).
    order = [i for ids in first + want for i in ids]
    while len(order) < len(source):
        order += _ids(next(resumed))
    order = order[: len(source)]
    batch_of = dict(
        zip(source.meta["event_id"].tolist(), source.meta["batch_id"].tolist(), strict=True)
    )
    files = [batch_of[i] for i in order]
    assert sum(a != b for a, b in zip(files[:-1], files[1:], strict=True)) == 1
    assert len(set(order)) == len(order)


def test_eval_batches_cover_every_event_once(root):
    config = _config(root)
    source = data.IceCubeSource(root, "train", (3,))
    processor = data_packing.make_processor(config, root)
    spec = data_packing.PackSpec.from_config(config)
    seen = []
    for p in range(2):
        for local, full in data_pipeline.eval_batches(
            source, processor, spec, packs_per_batch=4, process_index=p, process_count=2
        ):
            assert local["event_valid"].shape[0] == 2 and full["event_valid"].shape[0] == 4
            seen.append(_ids(local))
    ids = [i for ids in seen for i in ids]
    assert sorted(ids) == sorted(source.meta["event_id"].tolist())
