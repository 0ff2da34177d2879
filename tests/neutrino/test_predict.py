"""predict: a tiny trained model -> a Kaggle submission from test parquets with no meta rows."""

import csv
import os

import jax
import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from jaxlab.configs import neutrino as neutrino_config
from jaxlab.core import bundle as bundle_lib
from jaxlab.neutrino import data_packing, predict, synthetic, train

pytestmark = pytest.mark.slow  # trains a tiny model (~35 s on 2 cores), then predicts end to end


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """2 optimizer steps of the tiny config on 8 fake devices (what predict needs: a checkpoint)."""
    config = neutrino_config.get_config("tiny")
    config.data.synth.events_per_batch = 40
    config.train.num_steps = 2
    config.train.ckpt_every = 2
    config.train.eval_every = 0
    config.optim.warmup_steps = 1
    workdir = str(tmp_path_factory.mktemp("run"))
    train.train_and_evaluate(config, workdir)
    return config, workdir


def _read_submission(path):
    """The CSV by plain `csv`: header line as text, rows as (int, float, float)."""
    with open(path, newline="") as f:
        header = f.readline()
        rows = [(int(r[0]), float(r[1]), float(r[2])) for r in csv.reader(f)]
    return header, rows


def test_submission_from_a_lone_test_parquet_bundle_equals_checkpoint(trained, tmp_path):
    config, workdir = trained
    folder = predict.demo_input(config, workdir)
    assert not os.path.exists(os.path.join(folder, "test_meta.parquet"))
    (batch,) = os.listdir(os.path.join(folder, "test"))
    batch_file = os.path.join(folder, "test", batch)
    assert "azimuth" not in pq.read_schema(batch_file).names

    bundle = bundle_lib.export_bundle(config, workdir, str(tmp_path / "bundle"))
    (from_bundle,) = predict.predict(bundle, folder, str(tmp_path / "a"))
    # Explicit files instead of the Kaggle folder, from the checkpoint.
    (from_ckpt,) = predict.predict(
        workdir,
        batch_file,
        str(tmp_path / "b"),
        config=config,
        geometry=os.path.join(folder, "sensor_geometry.csv"),
    )
    with open(from_bundle, "rb") as a, open(from_ckpt, "rb") as b:
        assert a.read() == b.read()  # bitwise the same submission

    header, rows = _read_submission(from_bundle)
    assert header == "event_id,azimuth,zenith\n"  # unquoted
    pulses = pd.read_parquet(batch_file)
    want_ids = pulses["event_id"].unique().tolist()
    ids = [r[0] for r in rows]
    assert ids == want_ids and len(set(ids)) == len(ids) == 40
    azimuth, zenith = np.array([r[1] for r in rows]), np.array([r[2] for r in rows])
    assert np.all((azimuth >= 0) & (azimuth < 2 * np.pi)) and np.all(
        (zenith >= 0) & (zenith <= np.pi)
    )
    assert np.std(azimuth) > 0.01  # not one constant direction

    # Each row is the model's direction for that event alone, read from the parquet by pandas.
    _, params, _ = bundle_lib.load_model(bundle)
    spec = data_packing.PackSpec.from_config(config)
    geometry = pd.read_csv(os.path.join(folder, "sensor_geometry.csv"))[["x", "y", "z"]]
    processor = data_packing.EventProcessor(
        geometry.to_numpy(np.float32), config.data.max_doms, config.data.max_pulses_per_dom
    )
    model = predict.model_lib.make_model(config)
    apply = jax.jit(lambda batch: model.apply({"params": params}, batch))
    for i in (0, 17, 39):
        event = pulses[pulses["event_id"] == ids[i]]
        record = {k: event[k].to_numpy() for k in ("sensor_id", "time", "charge", "auxiliary")}
        record["sensor_id"] = record["sensor_id"].astype(np.int64)
        record["time"] = record["time"].astype(np.float64)
        packed = data_packing.pack_events(
            [processor({**record, "event_id": ids[i], "azimuth": 0.0, "zenith": 0.0})], spec
        )
        vector = np.asarray(
            apply(jax.tree.map(lambda x: x[None], data_packing.model_inputs(packed[0])))
        )
        want = vector[0, 0] / np.linalg.norm(vector[0, 0])
        got = synthetic.direction_vector(azimuth[i], zenith[i])
        np.testing.assert_allclose(got, want, atol=1e-4)


def test_kaggle_folder_with_test_meta_and_two_files(trained, tmp_path):
    """The whole synthetic Kaggle root (test_meta.parquet cross-checked) and a second file."""
    config, workdir = trained
    root = os.path.join(workdir, "data")
    (path,) = predict.predict(workdir, root, str(tmp_path / "out"), config=config)
    meta = pd.read_parquet(os.path.join(root, "test_meta.parquet"))
    _, rows = _read_submission(path)
    assert sorted(r[0] for r in rows) == sorted(meta["event_id"].tolist())

    # Two files: train batch 1 (its pulses only; no labels are read) and the test batch.
    files = f"{synthetic.batch_path(root, 'train', 1)},{synthetic.batch_path(root, 'test', 4)}"
    (path,) = predict.predict(
        workdir,
        files,
        str(tmp_path / "two"),
        config=config,
        geometry=synthetic.geometry_path(root),
    )
    df = pd.read_csv(path)
    assert list(df.columns) == ["event_id", "azimuth", "zenith"] and len(df) == 80
    assert df["event_id"].is_unique
    # The same file twice: every event would appear twice, so it is an error.
    twice = f"{synthetic.batch_path(root, 'test', 4)},{synthetic.batch_path(root, 'test', 4)}"
    with pytest.raises(ValueError, match=r"batch_4\.parquet: event_id \d+ is also in .*batch_4"):
        predict.predict(
            workdir,
            twice,
            str(tmp_path / "dup"),
            config=config,
            geometry=synthetic.geometry_path(root),
        )
