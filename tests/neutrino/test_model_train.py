"""Packed attention equivalence, one compilation, and a tiny end-to-end train + evaluate."""

import functools
import json
import os

import chex
import jax
import numpy as np
import pyarrow.csv as pa_csv
import pytest

import jaxlab.neutrino as neutrino_task
from jaxlab.configs import neutrino as neutrino_config
from jaxlab.core import mesh as mesh_lib
from jaxlab.core import optim
from jaxlab.core import state as state_lib
from jaxlab.neutrino import data, train
from jaxlab.neutrino import model as model_lib


def _tiny():
    return neutrino_config.get_config("tiny")


def _stack(packs):
    return jax.tree.map(lambda *xs: np.stack(xs), *packs)


def _params(config, spec):
    model = model_lib.make_model(config)
    params = model.init(jax.random.key(0), model_lib.dummy_batch(spec))["params"]
    return model, params


def test_packed_attention_equals_each_dom_and_event_alone():
    config = _tiny()
    spec = data.PackSpec(pulse_rows=4, pulse_row_len=32, dom_rows=2, dom_row_len=64, events=16)
    events = _processed_events(12)
    packs = data.pack_events(events, spec)
    pack = _stack(packs[:1])
    assert int(pack["event_valid"].sum()) >= 3 and int(pack["dom_segment"].max()) >= 2
    model, params = _params(config, spec)
    inputs = data.model_inputs(pack)
    packed_doms = model.apply(
        {"params": params}, inputs, deterministic=True, method=model.dom_embeddings
    )[0].reshape(spec.dom_tokens, -1)
    packed_pred = model.apply({"params": params}, inputs)[0]

    # Each DOM alone: its pulses in row 0 of an otherwise empty pack, as DOM slot 0.
    dom_slots = np.unique(pack["pulse_dom"][pack["pulse_segment"] > 0])
    assert len(dom_slots) > 4
    for d in dom_slots[:6]:
        tokens = pack["pulse_dom"][0] == d
        alone = data.empty_pack(spec)
        n = int(tokens.sum())
        alone["pulse_features"][0, :n] = pack["pulse_features"][0][tokens]
        alone["pulse_segment"][0, :n] = 1
        alone["pulse_dom"][0, :n] = 0
        got = model.apply(
            {"params": params},
            data.model_inputs(_stack([alone])),
            deterministic=True,
            method=model.dom_embeddings,
        )[0, 0, 0]
        np.testing.assert_allclose(got, packed_doms[d], rtol=1e-4, atol=1e-5)

    # Each event alone in a pack predicts what it predicts packed with the others.
    together = model.apply({"params": params}, data.model_inputs(_stack(packs[:1])))[0]
    for e in range(int(packs[0]["event_valid"].sum())):
        alone = data.pack_events([events[e]], spec)
        got = model.apply({"params": params}, data.model_inputs(_stack(alone)))[0, 0]
        np.testing.assert_allclose(got, together[e], rtol=1e-4, atol=1e-5)
    assert np.all(np.isfinite(packed_pred))


def _processed_events(count):
    from jaxlab.neutrino import synthetic

    rng = np.random.default_rng(1)
    positions = synthetic.geometry()
    processor = data.EventProcessor(positions.astype(np.float32), 32, 4)
    events = []
    for i in range(count):
        pulses, az, zen = synthetic.simulate_event(
            rng, positions, max_pulses=40, energy_scale=3.0, energy_cap=50.0
        )
        events.append(processor({**pulses, "event_id": i, "azimuth": az, "zenith": zen}))
    return events


def test_train_step_compiles_once_on_8_devices():
    config = _tiny()
    spec = data.PackSpec.from_config(config)
    mesh = mesh_lib.make_mesh([("data", -1)])
    model = model_lib.make_model(config)
    tx = optim.make_optimizer(config.optim, config.train.num_steps)
    init_fn = functools.partial(model_lib.init_state, model=model, tx=tx, spec=spec)
    state, shardings = state_lib.init_sharded(init_fn, jax.random.key(0), mesh)
    chex.clear_trace_counter()
    counted = chex.assert_max_traces(train.train_step, n=1)
    step = jax.jit(
        functools.partial(
            counted, model=model, tx=tx, loss_name="vmf", dropout_key=jax.random.key(1)
        ),
        in_shardings=(shardings, mesh_lib.data_sharding(mesh)),
        out_shardings=(shardings, mesh_lib.replicated(mesh)),
        donate_argnums=0,
    )
    for seed in range(3):  # different events, sizes and pack fill; a retrace would raise
        config.seed = seed
        batch = data.model_inputs(train.synthetic_batch(config, spec))
        state, metrics = step(state, mesh_lib.global_batch(batch, mesh))
        assert np.isfinite(float(metrics["loss"]))
    assert int(state.step) == 3


def test_tiny_train_and_evaluate_learns_and_writes_outputs(tmp_path):
    config = _tiny()
    config.train.num_steps = 100
    config.train.eval_every = 50
    config.train.ckpt_every = 50
    config.train.log_every = 10
    workdir = str(tmp_path)
    final = train.train_and_evaluate(config, workdir)
    result = neutrino_task.evaluate(config, workdir)

    assert result["baseline_constant"] == pytest.approx(np.pi / 2, abs=0.2)
    assert result["mean_angular_error"] < result["baseline_constant"] - 0.4, result
    assert final["mean_angular_error"] >= result["mean_angular_error"] - 1e-9  # best <= last
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
    test_result = neutrino_task.evaluate(config, workdir)
    assert "mean_angular_error" not in test_result and test_result["num_events"] == 300
    assert os.path.exists(os.path.join(workdir, "eval", "test", "submission.csv"))
