"""The hierarchy study (`neutrino:study_tiny`): the flat arm sees the same pulses, the baselines
are what they say, the arms are matched, and both transformers learn the planted direction.

The synthetic events carry their direction in the pulse times against the DOM positions
(`synthetic.py`). Both transformers must learn it and beat the task's baseline (the mean training
direction as a constant guess), each with a paired interval that excludes no difference; the
flat arm must see exactly the hierarchical arm's pulse tokens (so the comparison is of attention
structure, not of inputs), and the arms must match in parameters within `study.max_param_gap`.
"""

import json
import os

import jax
import numpy as np
import pytest

from jaxlab.configs import example as example_config
from jaxlab.configs import neutrino as neutrino_config
from jaxlab.core import study as study_lib
from jaxlab.core import task as task_lib
from jaxlab.neutrino import data_packing, evaluate, study, synthetic
from jaxlab.neutrino import model as model_lib
from tests.core import study_util


def _processed_events(count, seed=3):
    gen = np.random.default_rng(seed)
    positions = synthetic.geometry()
    processor = data_packing.EventProcessor(positions.astype(np.float32), 32, 4)
    events = []
    for i in range(count):
        pulses, az, zen = synthetic.simulate_event(
            gen, positions, max_pulses=40, energy_scale=3.0, energy_cap=50.0
        )
        raw = {**pulses, "event_id": np.int64(100 + i), "azimuth": az, "zenith": zen}
        events.append(processor(raw))
    return events


SPEC = data_packing.PackSpec(pulse_rows=4, pulse_row_len=32, dom_rows=2, dom_row_len=32, events=8)


def _sorted_rows(a):
    return a[np.lexsort(a.T[::-1])]


def test_flat_tokens_are_each_events_pulses_with_their_doms_geometry():
    events = _processed_events(10)
    pack = data_packing.pack_events(events, SPEC)[0]
    batch = {k: pack[k][None] for k in data_packing.MODEL_KEYS}
    tokens, event = jax.jit(model_lib.flat_tokens)(batch)
    tokens, event = np.asarray(tokens[0]), np.asarray(event[0])
    num = int(pack["event_valid"].sum())
    assert num >= 3
    for e in range(num):
        src = events[e]
        # Independently: every pulse next to its own DOM's features, DOM by DOM.
        expected = np.concatenate(
            [src["pulses"], np.repeat(src["dom_features"], src["dom_lengths"], axis=0)], axis=1
        )
        got = tokens[event == e]
        np.testing.assert_array_equal(_sorted_rows(got), _sorted_rows(expected))
    padding = pack["pulse_segment"].reshape(-1) == 0
    assert np.all(event[padding] == SPEC.events) and np.all(tokens[padding] == 0)
    assert np.all(event[~padding] < num)


def test_cost_matched_flat_arm_keeps_each_events_first_clean_pulses():
    """first_clean_pulses against an independent per-event sort: non-auxiliary first, then time;
    event e's kept pulses fill its own row of K slots, the rest of the row is padding."""
    events = _processed_events(10)
    pack = data_packing.pack_events(events, SPEC)[0]
    batch = {k: pack[k][None] for k in data_packing.MODEL_KEYS}
    tokens, event = model_lib.flat_tokens(batch)
    k = 5
    kept, slot_event = jax.jit(model_lib.first_clean_pulses, static_argnums=(2, 3))(
        tokens, event, SPEC.events, k
    )
    kept, slot_event = np.asarray(kept[0]).reshape(SPEC.events, k, -1), np.asarray(slot_event[0])
    slot_event = slot_event.reshape(SPEC.events, k)
    tokens, event = np.asarray(tokens[0]), np.asarray(event[0])
    num = int(pack["event_valid"].sum())
    for e in range(SPEC.events):
        mine = np.flatnonzero(event == e)
        order = mine[np.lexsort((mine, tokens[mine, 0], tokens[mine, 2]))][:k]
        n = len(order)
        assert n == (min(k, len(events[e]["pulses"])) if e < num else 0)
        np.testing.assert_array_equal(kept[e, :n], tokens[order])
        assert np.all(slot_event[e, :n] == e) and np.all(slot_event[e, n:] == SPEC.events)
        assert np.all(kept[e, n:] == 0)


def test_cost_matched_arm_attends_over_at_most_the_hierarchical_cost():
    config = neutrino_config.get_config("study_long_tiny")
    k = study.matched_tokens(config)
    pairs = study.event_attention_pairs(config)
    d, p = config.data.max_doms, config.data.max_pulses_per_dom
    assert k**2 <= d * p * p + d * d < (k + 1) ** 2 and pairs["flat_matched"] == k**2
    matched = study.arm_config(config, "flat_matched", 0, "/data")
    assert matched.model.kind == "flat" and matched.model.flat_max_tokens == k
    assert study.arm_config(config, "flat", 0, "/data").model.flat_max_tokens == 0
    model = model_lib.make_model(matched)
    assert model.max_tokens == k
    counts = study.param_counts(config)
    assert counts["flat_matched"] == counts["flat"]


@pytest.mark.parametrize("kind", ["flat", "hierarchical", "flat_matched"])
def test_an_events_prediction_does_not_depend_on_its_pack_mates(kind):
    """Segment masking: an event packed with others predicts what it predicts alone."""
    config = study.arm_config(neutrino_config.get_config("study_tiny"), kind, 0, "/data")
    config.model.flat_max_tokens = 6 if kind == "flat_matched" else 0
    model = model_lib.make_model(config)
    params = jax.jit(model.init)(jax.random.key(0), model_lib.dummy_batch(SPEC))["params"]
    events = _processed_events(10)
    pack = data_packing.pack_events(events, SPEC)[0]
    num = int(pack["event_valid"].sum())
    apply = jax.jit(model.apply)  # every pack has SPEC's shapes: one compilation
    together = apply({"params": params}, {k: pack[k][None] for k in data_packing.MODEL_KEYS})
    for e in range(num):
        alone = data_packing.pack_events([events[e]], SPEC)[0]
        out = apply({"params": params}, {k: alone[k][None] for k in data_packing.MODEL_KEYS})
        np.testing.assert_allclose(out[0, 0], together[0, e], rtol=2e-4, atol=2e-5)


def test_linefit_recovers_a_straight_line_of_hits():
    """Pulses on DOMs along r(t) = r0 + v t give v's opposite (where the muon comes from)."""
    velocity = np.array([0.3, -0.2, -0.9])
    times = np.linspace(0.0, 600.0, 12)  # ns
    positions = np.array([50.0, -20.0, 100.0]) + times[:, None] * velocity  # metres
    event = {
        "pulses": np.stack(
            [times / data_packing.TIME_SCALE_NS, np.zeros(12), np.zeros(12)], axis=1
        ).astype(np.float32),
        "dom_features": np.concatenate(
            [positions / data_packing.GEOMETRY_SCALE_M, np.zeros((12, 1))], axis=1
        ),
        "dom_lengths": np.ones(12, np.int32),
    }
    np.testing.assert_allclose(
        study.linefit(event), -velocity / np.linalg.norm(velocity), atol=1e-5
    )
    # Auxiliary pulses (noise) are left out while two clean ones remain.
    event["pulses"][3, 0], event["pulses"][3, 2] = 5.0, 1.0
    np.testing.assert_allclose(
        study.linefit(event), -velocity / np.linalg.norm(velocity), atol=1e-5
    )


@pytest.mark.parametrize("variant", ["study", "study_tiny", "study_paper"])
def test_arms_match_in_parameters_and_keep_the_token_budget(variant):
    config = neutrino_config.get_config(variant)
    counts = study.param_counts(config)
    assert abs(counts["flat"] / counts["hierarchical"] - 1) <= 0.02, counts
    flat = study.arm_config(config, "flat", 0, "/data")
    hier = study.arm_config(config, "hierarchical", 0, "/data")
    assert (flat.model.kind, hier.model.kind) == ("flat", "hierarchical")
    assert flat.data.to_dict() == hier.data.to_dict()  # same truncation, same packs
    config.model.flat_mlp_dim = 4 * config.model.mlp_dim
    with pytest.raises(ValueError, match="max_param_gap"):
        study.param_counts(config)


def test_default_model_is_unchanged_and_unknown_kinds_are_refused():
    config = neutrino_config.get_config("demo")
    assert config.model.kind == "hierarchical"
    assert isinstance(model_lib.make_model(config), model_lib.HierarchicalTransformer)
    config.model.kind = "graph"
    with pytest.raises(ValueError, match="model.kind"):
        model_lib.make_model(config)


def test_study_command_finds_the_task_study_and_needs_a_study_block():
    config = neutrino_config.get_config("study_tiny")
    assert task_lib.import_task(config, "study").main is study.main
    with pytest.raises(ValueError, match="cannot import jaxlab.example.study"):
        task_lib.import_task(example_config.get_config("tiny"), "study")
    with pytest.raises(ValueError, match="neutrino:study"):
        study.main(neutrino_config.get_config("tiny"), "/nonexistent")
    config.study.arms = ("hierarchical", "graph_net")
    with pytest.raises(ValueError, match="arms must be among"):
        study.main(config, "/nonexistent")


@pytest.mark.slow  # two small training runs (about 40 s on a quiet 2-core CPU)
def test_study_tiny_both_transformers_beat_the_baseline_direction(tmp_path, two_devices):
    config = neutrino_config.get_config("study_tiny")
    workdir = str(tmp_path)
    flat = study.main(config, workdir)

    saved, table = study_util.written_report(workdir)
    assert "hierarchical" in table and "reference" in table and "pulses" in table

    # The study's numbers are the saved predictions' numbers (recomputed here).
    errors = {}
    for arm in ("hierarchical", "flat"):  # the arms of study_tiny
        saved_pred = dict(np.load(study.prediction_path(workdir, arm, 0)))
        errors[arm] = evaluate.event_errors(saved_pred)
        value = saved["metrics"]["mean_angular_error"][arm]["value"]
        assert value == pytest.approx(errors[arm].mean())
        assert flat[f"study_{arm}_mean_angular_error"] == pytest.approx(errors[arm].mean())
    bins = saved["events_per_bin"]
    assert sum(bins.values()) == saved["num_cases"] == len(errors["flat"])

    # The planted signal is learnt by both transformers: each beats the constant mean direction
    # by a margin, with a paired bootstrap interval of the difference that excludes 0.
    base = dict(np.load(os.path.join(workdir, "study", "predictions_baselines.npz")))
    truth = dict(np.load(study.prediction_path(workdir, "hierarchical", 0)))
    base_errors = evaluate.event_errors({**truth, "pred": base["mean_direction"]})
    assert base_errors.mean() > 1.3, base_errors.mean()  # about pi / 2: isotropic directions
    arms = {"mean_direction": base_errors, **errors}
    vs_base = study_lib.compare(
        {"error": {arm: study_lib.mean_of(e) for arm, e in arms.items()}},
        "mean_direction",
        len(base_errors),
        num_resamples=500,
    )["metrics"]["error"]
    for arm in ("hierarchical", "flat"):  # the arms of study_tiny
        assert vs_base[arm]["diff"] < -0.3, (arm, vs_base[arm])
        assert vs_base[arm]["diff_hi"] < 0, (arm, vs_base[arm])


@pytest.mark.slow  # two small training runs (23-86 s on the shared 2-core CPU)
def test_study_long_tiny_hierarchy_beats_the_cost_matched_flat_arm(tmp_path, two_devices):
    """On long events (many pulses per DOM) the hierarchy reads all 16 x 16 pulses at the cost a
    flat encoder pays for 65: it must beat that flat arm, with a paired interval excluding 0.

    Measured with seeds 0, 1, 2: hierarchical better by 0.16, 0.22, 0.27 rad, each interval's
    lower end at 0.10 or above (jaxlab/neutrino/README.md, "Long events"); with today's code and
    validation at steps 60 and 120, 0.153 [0.089, 0.227] and 0.453 [0.376, 0.529] (seeds 0, 1)."""
    config = neutrino_config.get_config("study_long_tiny")
    config.study.arms = ("hierarchical", "flat_matched", "mean_direction")
    study.main(config, str(tmp_path))
    with open(os.path.join(tmp_path, "study", "study.json")) as f:
        saved = json.load(f)
    result = saved["metrics"]["mean_angular_error"]
    assert saved["matched_tokens"] == 65
    assert result["flat_matched"]["diff"] > 0.05, result["flat_matched"]
    assert result["flat_matched"]["diff_lo"] > 0, result["flat_matched"]
    # Both learnt something: the hierarchy well below the constant guess.
    assert result["mean_direction"]["diff_lo"] > 0.2, result["mean_direction"]
