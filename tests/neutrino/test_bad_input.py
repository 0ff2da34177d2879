"""Malformed Kaggle IceCube inputs: one clear error naming the file and the field, or a counted
policy (duplicates); and synthetic data never touches a user's folder."""

import logging
import os
import shutil

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from jaxlab.configs import neutrino as neutrino_config
from jaxlab.data import ownership
from jaxlab.neutrino import data, predict, synthetic
from tests.folder_md5 import md5_tree


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    config = neutrino_config.get_config("tiny")
    config.data.synth.events_per_batch = 30
    return data.prepare(config, str(tmp_path_factory.mktemp("run")))


@pytest.fixture
def copy(root, tmp_path):
    return shutil.copytree(root, str(tmp_path / "copy"))


def _batch(copy):
    return synthetic.batch_path(copy, "train", 1)


def _rewrite(path, table):
    pq.write_table(table, path)


def _num_sensors(copy):
    return len(data.read_geometry(copy))


def test_duplicated_meta_rows_error_or_drop_later_counted(copy, caplog):
    path = synthetic.meta_path(copy, "train")
    meta = pq.read_table(path)
    _rewrite(path, pa.concat_tables([meta, meta.slice(3, 2)]))
    with pytest.raises(ValueError, match=r"train_meta\.parquet: column 'event_id' repeats 2 row"):
        data.IceCubeSource(copy, "train", (1,))
    with caplog.at_level(logging.WARNING):
        source = data.IceCubeSource(copy, "train", (1,), on_duplicate="drop_later")
    assert len(source) == 30 and len(np.unique(source.meta["event_id"])) == 30
    assert "dropped 2 later row(s)" in caplog.text and "train_meta.parquet" in caplog.text
    config = neutrino_config.get_config("tiny")
    config.data.on_duplicate = "keep_both"
    with pytest.raises(ValueError, match="data.on_duplicate is 'keep_both'"):
        data.load_split(config, copy, "train")


def test_truncated_parquet_names_the_file(copy):
    for path in (_batch(copy), synthetic.meta_path(copy, "train")):
        with open(path, "rb") as f:
            head = f.read(os.path.getsize(path) // 2)
        with open(path, "wb") as f:
            f.write(head)
    with pytest.raises(ValueError, match=r"train_meta\.parquet: cannot read as parquet"):
        data.IceCubeSource(copy, "train", (1,))
    with pytest.raises(ValueError, match=r"batch_1\.parquet: cannot read as parquet"):
        data.read_pulses(_batch(copy), 5160)


def test_string_pulse_times_name_file_and_column(copy):
    path = _batch(copy)
    table = pq.read_table(path)
    times = pa.array([str(t) for t in table["time"].to_pylist()])
    _rewrite(path, table.set_column(table.schema.get_field_index("time"), "time", times))
    source = data.IceCubeSource(copy, "train", (1,))
    with pytest.raises(
        ValueError, match=r"batch_1\.parquet: column 'time' is string; expected a numeric"
    ):
        source[0]


@pytest.mark.parametrize("column", ["charge", "auxiliary", "sensor_id"])
def test_missing_pulse_column(copy, column):
    path = _batch(copy)
    _rewrite(path, pq.read_table(path).drop([column]))
    with pytest.raises(ValueError, match=rf"batch_1\.parquet: missing column\(s\) \['{column}'\]"):
        data.read_pulses(path, _num_sensors(copy))


def test_predict_needs_the_event_id_column(copy):
    path = _batch(copy)
    _rewrite(path, pq.read_table(path).drop(["event_id"]))
    columns = data.read_pulses(path, _num_sensors(copy))
    with pytest.raises(ValueError, match=r"batch_1\.parquet: missing column 'event_id'"):
        predict.event_runs(columns)


def test_non_finite_charge_and_null_time(copy):
    path = _batch(copy)
    table = pq.read_table(path)
    charge = table["charge"].to_numpy().copy()
    charge[[5, 9]] = [np.nan, np.inf]
    event = table["event_id"][5].as_py()
    _rewrite(path, table.set_column(table.schema.get_field_index("charge"), "charge", [charge]))
    with pytest.raises(
        ValueError,
        match=rf"batch_1\.parquet: column 'charge' holds 2 NaN or Inf .*event_id {event}\)",
    ):
        data.read_pulses(path, 5160)
    times = table["time"].to_pylist()
    times[0] = None
    _rewrite(path, table.set_column(2, "time", pa.array(times, pa.int64())))
    with pytest.raises(ValueError, match=r"batch_1\.parquet: column 'time' holds 1 nulls"):
        data.read_pulses(path, 5160)


def test_non_finite_geometry(copy):
    path = synthetic.geometry_path(copy)
    with open(path) as f:
        lines = f.read().splitlines()
    lines[3] = lines[3].rsplit(",", 1)[0] + ",nan"
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")
    with pytest.raises(ValueError, match=r"sensor_geometry\.csv: columns x, y, z hold NaN"):
        data.read_geometry(copy)


def test_sensor_ids_outside_the_geometry(copy):
    path = _batch(copy)
    table = pq.read_table(path)
    sensor = table["sensor_id"].to_numpy().copy()
    sensor[[0, 1, 2]] = [-1, 5160, 7000]
    column = pa.array(sensor, pa.int16())
    _rewrite(path, table.set_column(table.schema.get_field_index("sensor_id"), "sensor_id", column))
    with pytest.raises(
        ValueError,
        match=r"batch_1\.parquet: column 'sensor_id' holds 3 values outside 0..5159 .*e\.g\. -1",
    ):
        data.read_pulses(path, 5160)


def test_events_whose_pulses_are_missing(copy):
    path = _batch(copy)
    table = pq.read_table(path)
    ids = table["event_id"].to_numpy()
    gone = int(ids[len(ids) // 2])
    _rewrite(path, table.filter(pc.not_equal(table["event_id"], gone)))
    source = data.IceCubeSource(copy, "train", (1,))
    with pytest.raises(ValueError, match=r"batch_1\.parquet: .*its pulses are missing"):
        source[0]
    # predict, given the meta table, checks the same; without it, the event is simply absent.
    columns = data.read_pulses(path, 5160)
    event_ids, _, _ = predict.event_runs(columns)
    assert gone not in event_ids.tolist()
    with pytest.raises(ValueError, match=r"batch_1\.parquet: .*event_id"):
        predict.cross_check_meta(synthetic.meta_path(copy, "train"), columns, event_ids)


def test_split_event_in_a_batch_file(copy):
    path = _batch(copy)
    table = pq.read_table(path)
    order = np.arange(table.num_rows)
    order[[0, -1]] = order[[-1, 0]]  # the first and last pulses swap places
    _rewrite(path, table.take(order))
    with pytest.raises(ValueError, match=r"batch_1\.parquet: column 'event_id'.*consecutive"):
        predict.event_runs(data.read_pulses(path, 5160))


def test_empty_batch_file(copy):
    path = _batch(copy)
    _rewrite(path, pq.read_table(path).slice(0, 0))
    with pytest.raises(ValueError, match=r"batch_1\.parquet: no pulses \(an empty batch file\)"):
        data.read_pulses(path, 5160)
    source = data.IceCubeSource(copy, "train", (1,))
    with pytest.raises(ValueError, match="an empty batch file"):
        source[0]


def test_missing_inputs_for_predict(copy, tmp_path):
    with pytest.raises(FileNotFoundError, match=r"nothing\.parquet: no such input file"):
        predict.batch_files(str(tmp_path / "nothing.parquet"))
    lone = tmp_path / "lone"
    lone.mkdir()
    shutil.copy(_batch(copy), lone)
    files = predict.batch_files(str(lone))
    with pytest.raises(FileNotFoundError, match=r"no sensor_geometry\.csv .*geometry=PATH"):
        predict.find_geometry(str(lone), files)


def test_synthetic_data_never_touches_a_user_folder(root, tmp_path):
    """A user's Kaggle folder (here: real-format files without jaxlab's marker) is refused."""
    user = str(tmp_path / "kaggle")
    shutil.copytree(root, user, ignore=shutil.ignore_patterns(ownership.MARKER, ".synthetic_done"))
    # The user's own files differ from what the synthetic writer would write.
    pq.write_table(pq.read_table(_batch(user)).slice(0, 10), _batch(user))
    before = md5_tree(user)
    config = neutrino_config.get_config("tiny")
    config.data.root = user
    with pytest.raises(ownership.DataDirError, match=r"kaggle holds files that jaxlab did not"):
        data.prepare(config, str(tmp_path / "work"))
    assert md5_tree(user) == before
    # The writer itself refuses to replace a file outside a claimed folder.
    with pytest.raises(ownership.DataDirError, match=r"sensor_geometry\.csv exists"):
        synthetic.write_geometry(user)
    assert md5_tree(user) == before
    # With data.synthetic=False the same folder is read as it is.
    config.data.synthetic = False
    assert data.prepare(config, "unused") == user
    assert len(data.IceCubeSource(user, "train", (1,))) == 30
