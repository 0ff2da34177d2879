"""Packed attention equivalence, one compilation, the eval pass, and a tiny train + evaluate."""

import functools
import json
import os

import chex
import jax
import numpy as np
import pyarrow.csv as pa_csv
import pytest

from jaxlab.configs import neutrino as neutrino_config
from jaxlab.core import mesh as mesh_lib
from jaxlab.core import parts as parts_lib
from jaxlab.core import rng, steps_jit
from jaxlab.core.writer import read_metrics
from jaxlab.neutrino import data_packing, evaluate, metrics, steps, synthetic, train
from jaxlab.neutrino import model as model_lib


def _tiny():
    return neutrino_config.get_config("tiny")


def _stack(packs):
    return jax.tree.map(lambda *xs: np.stack(xs), *packs)


def _params(config, spec):
    model = model_lib.make_model(config)
    params = jax.jit(model.init)(jax.random.key(0), model_lib.dummy_batch(spec))["params"]
    return model, params


def _raw_events(count, seed=1):
    """Simulated raw records, as `data.IceCubeSource[i]` returns them."""
    gen = np.random.default_rng(seed)
    positions = synthetic.geometry()
    events = []
    for i in range(count):
        pulses, az, zen = synthetic.simulate_event(
            gen, positions, max_pulses=40, energy_scale=3.0, energy_cap=50.0
        )
        events.append({**pulses, "event_id": np.int64(100 + i), "azimuth": az, "zenith": zen})
    return events


def _processed_events(count):
    processor = data_packing.EventProcessor(synthetic.geometry().astype(np.float32), 32, 4)
    return [processor(event) for event in _raw_events(count)]


def test_packed_attention_equals_each_dom_and_event_alone():
    config = _tiny()
    spec = data_packing.PackSpec(
        pulse_rows=4, pulse_row_len=32, dom_rows=2, dom_row_len=64, events=16
    )
    events = _processed_events(12)
    packs = data_packing.pack_events(events, spec)
    pack = _stack(packs[:1])
    assert int(pack["event_valid"].sum()) >= 3 and int(pack["dom_segment"].max()) >= 2
    model, params = _params(config, spec)
    # Jitted once per function: every call below has the same shapes.
    dom_embeddings = jax.jit(
        lambda batch: model.apply(
            {"params": params}, batch, deterministic=True, method=model.dom_embeddings
        )
    )
    predict = jax.jit(lambda batch: model.apply({"params": params}, batch))
    inputs = data_packing.model_inputs(pack)
    packed_doms = dom_embeddings(inputs)[0].reshape(spec.dom_tokens, -1)
    packed_pred = predict(inputs)[0]

    # Each DOM alone: its pulses in row 0 of an otherwise empty pack, as DOM slot 0.
    dom_slots = np.unique(pack["pulse_dom"][pack["pulse_segment"] > 0])
    assert len(dom_slots) > 4
    for d in dom_slots[:6]:
        tokens = pack["pulse_dom"][0] == d
        alone = data_packing.empty_pack(spec)
        n = int(tokens.sum())
        alone["pulse_features"][0, :n] = pack["pulse_features"][0][tokens]
        alone["pulse_segment"][0, :n] = 1
        alone["pulse_dom"][0, :n] = 0
        got = dom_embeddings(data_packing.model_inputs(_stack([alone])))[0, 0, 0]
        np.testing.assert_allclose(got, packed_doms[d], rtol=1e-4, atol=1e-5)

    # Each event alone in a pack predicts what it predicts packed with the others.
    for e in range(int(packs[0]["event_valid"].sum())):
        alone = data_packing.pack_events([events[e]], spec)
        got = predict(data_packing.model_inputs(_stack(alone)))[0, 0]
        np.testing.assert_allclose(got, packed_pred[e], rtol=1e-4, atol=1e-5)
    assert np.all(np.isfinite(packed_pred))


def test_parts_train_step_compiles_once_on_8_devices():
    config = _tiny()
    mesh = mesh_lib.make_mesh([("data", -1)])
    parts = steps.build(config, mesh)
    state = parts_lib.init_state(parts, rng.stream(0, "init"))
    chex.clear_trace_counter()
    counted = chex.assert_max_traces(steps.train_step, n=1)
    step = steps_jit.jit_train_step(
        functools.partial(
            counted,
            model=parts.model,
            tx=parts.optimizer,
            loss_name="vmf",
            dropout_key=rng.stream(0, "dropout"),
        ),
        parts.shardings,
        mesh,
    )
    for seed in range(3):  # different events, sizes and pack fill; a retrace would raise
        batch = data_packing.synthetic_batch(config, parts.extras.spec, seed)
        state, step_metrics = step(state, mesh_lib.global_batch(_inputs(batch), mesh))
        assert np.isfinite(float(step_metrics["loss"]))
        assert float(step_metrics["events"]) == batch["event_valid"].sum()
    assert int(state.step) == 3


def _inputs(batch):
    return data_packing.model_inputs(batch)


class _Records(list):
    """An in-memory split: record i is what `data.IceCubeSource[i]` returns."""

    has_labels = True


def test_eval_pass_maps_predictions_to_events_and_sums_match_host_metric():
    config = _tiny()
    config.data.pack_events = 4  # several packs, and batches padded with empty packs
    config.eval.global_batch_size = 2
    mesh = mesh_lib.make_mesh([("data", -1)], devices=jax.devices()[:2])
    parts = steps.build(config, mesh)
    state = parts_lib.init_state(parts, rng.stream(0, "init"))
    records = _Records(_raw_events(19, seed=2))
    processor = data_packing.EventProcessor(
        synthetic.geometry().astype(np.float32),
        config.data.max_doms,
        config.data.max_pulses_per_dom,
    )
    result = evaluate.predict_split(
        parts.eval_step, state.params, records, processor, parts.extras.spec, mesh, 2
    )

    assert result["event_id"].tolist() == [int(r["event_id"]) for r in records]
    # Each prediction is the model's output for that event packed alone.
    predict = jax.jit(lambda batch: parts.model.apply({"params": state.params}, batch))
    for i in (0, 7, 18):
        alone = _stack(data_packing.pack_events([processor(records[i])], parts.extras.spec))
        want = predict(_inputs(alone))[0, 0]
        np.testing.assert_allclose(result["pred"][i], want, rtol=1e-4, atol=1e-5)
    # The device's float32 sums give the mean of the host's float64 competition formula.
    az, zen = np.array([r["azimuth"] for r in records]), np.array([r["zenith"] for r in records])
    az_pred, zen_pred = metrics.vector_to_angles(result["pred"])
    host_mean = metrics.angular_errors(az, zen, az_pred, zen_pred).mean()
    assert result["sums"]["events"] == len(records)
    device_mean = result["sums"]["angular_error"] / result["sums"]["events"]
    assert device_mean == pytest.approx(host_mean, rel=1e-4)
    assert evaluate.scalar_metrics(result)["mean_angular_error"] == pytest.approx(host_mean)


@pytest.mark.slow  # 100 steps, two evaluations and two evaluate() passes
def test_tiny_train_and_evaluate_learns_and_writes_outputs(tmp_path, two_devices):
    config = _tiny()
    config.train.num_steps = 100
    config.train.eval_every = 50
    config.train.ckpt_every = 50
    config.train.log_every = 10
    workdir = str(tmp_path)
    final = train.train_and_evaluate(config, workdir)
    result = evaluate.evaluate(config, workdir)

    assert result["baseline_constant"] == pytest.approx(np.pi / 2, abs=0.2)
    assert result["mean_angular_error"] < result["baseline_constant"] - 0.4, result
    logged = [m for m in read_metrics(workdir) if "mean_angular_error" in m]
    assert [m["step"] for m in logged] == [50, 100]
    best = min(logged, key=lambda m: m["mean_angular_error"])
    assert result["checkpoint_step"] == best["step"]
    assert result["mean_angular_error"] == pytest.approx(best["mean_angular_error"], rel=1e-6)
    assert final["mean_angular_error"] == pytest.approx(logged[-1]["mean_angular_error"])

    # Rates: events/s is steps/s times the window's events per step (packs hold several events).
    rows = [m for m in read_metrics(workdir) if "events_per_sec" in m]
    assert [m["step"] for m in rows] == list(range(10, 101, 10))
    for m in rows[1:]:
        events_per_step = m["events_per_pack"] * config.train.global_batch_size
        assert events_per_step > 2 * config.train.global_batch_size
        want = m["steps_per_sec"] * events_per_step
        assert m["events_per_sec"] == pytest.approx(want, rel=0.3), m

    out = os.path.join(workdir, "eval", "eval")
    with open(os.path.join(out, "metrics.json")) as f:
        saved = json.load(f)
    assert saved["mean_angular_error"] == pytest.approx(result["mean_angular_error"])
    assert sum(b["count"] for b in saved["by_num_pulses"].values()) == saved["num_events"] == 300
    submission = pa_csv.read_csv(os.path.join(out, "submission.csv"))
    assert submission.column_names == ["event_id", "azimuth", "zenith"]
    assert submission.num_rows == 300
    az = submission["azimuth"].to_numpy()
    assert np.all((az >= 0) & (az < 2 * np.pi))
    for name in ("error_vs_size.png", "zenith.png"):
        assert os.path.getsize(os.path.join(out, name)) > 1000
    # The unlabelled test split: a submission, no metrics.
    config.eval.split = "test"
    test_result = evaluate.evaluate(config, workdir)
    assert "mean_angular_error" not in test_result and test_result["num_events"] == 300
    assert os.path.exists(os.path.join(workdir, "eval", "test", "submission.csv"))
