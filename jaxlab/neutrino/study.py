"""The hierarchy study: does pulse -> DOM -> event attention beat one flat attention over pulses?

iceaggr's claim is that an event is best read in two steps: a transformer over each DOM's pulses
(its photon arrival pattern) pooled to one DOM embedding, then a transformer over the DOMs with
their geometry. The study trains, on the same data and with the same seeds, and scores on the
same held-out events (`study.test_batches`, a batch used neither for training nor for choosing
the checkpoint):

  hierarchical    the reference: `model.HierarchicalTransformer` (the task's model)
  flat            `model.FlatTransformer`: the same pulse tokens (same truncation, same packs,
                  so the same token budget), each with its DOM's geometry, one encoder attending
                  over all pulses of an event; its depth / width (`model.flat_layers`,
                  `model.flat_mlp_dim`) match the hierarchical parameter count within
                  `study.max_param_gap` (checked, both counts logged and saved)
  flat_matched    the flat arm at the hierarchical arm's attention cost: per event it attends
                  over at most K = `matched_tokens` pulses (non-auxiliary first, earliest first:
                  `model.first_clean_pulses`), K^2 <= D * P^2 + D^2 query-key pairs, the
                  hierarchical model's cost for an event of D = data.max_doms DOMs of
                  P = data.max_pulses_per_dom pulses; the same parameters as `flat`
  linefit         the classic IceCube first guess (`linefit`): a least-squares straight line
                  through the same pulses' positions against time, the direction it comes from
  mean_direction  the task's `baseline_constant`: the mean training direction for every event

Each trained arm x seed is an ordinary training run (`train.train_and_evaluate`, in
`<workdir>/arms/<arm>/s<seed>`, resumable, best checkpoint by validation angular error) whose
best checkpoint then predicts the test events; the predictions go to
`<workdir>/study/predictions_<arm>_s<seed>.npz`. A rerun skips finished cells. The report scores
every arm with the competition metric (mean angular error, radians) on all test events and per
bin of the number of pulses (`study.pulse_bins`, counted before truncation), each with its
difference to the reference and a paired bootstrap 95% interval over test events
(`core.study`); with several seeds an event's error counts once per seed inside every resample.
Files: `study/table.md`, `study/study.png`, `study/study.json`.
"""

from __future__ import annotations

import os
import time

import ml_collections
import numpy as np
from absl import logging

from jaxlab.core import mesh as mesh_lib
from jaxlab.core import restore
from jaxlab.core import study as study_lib
from jaxlab.neutrino import data, data_packing, evaluate, metrics, steps, train
from jaxlab.neutrino import model as model_lib
from jaxlab.neutrino.format import direction_vector

ARMS = ("hierarchical", "flat", "flat_matched", "linefit", "mean_direction")
TRAINED_ARMS = ("hierarchical", "flat", "flat_matched")
OVERALL = "mean_angular_error"


def arm_config(
    config: ml_collections.ConfigDict, arm: str, seed: int, root: str
) -> ml_collections.ConfigDict:
    """`config` for one trained arm and seed, reading the study's one dataset in `root`."""
    if arm not in TRAINED_ARMS:
        raise ValueError(f"config.study.arms: {arm!r} is not a trained arm {TRAINED_ARMS}.")
    c = study_lib.cell_config(config, seed, "root", root)
    c.model.kind = "flat" if arm == "flat_matched" else arm
    c.model.flat_max_tokens = matched_tokens(config) if arm == "flat_matched" else 0
    return c


def event_attention_pairs(config: ml_collections.ConfigDict) -> dict[str, int]:
    """Query-key pairs one attention layer computes for the largest event the truncation allows
    (D = data.max_doms DOMs of P = data.max_pulses_per_dom pulses): hierarchical D P^2 + D^2, flat
    (D P)^2, flat_matched K^2 with K = `matched_tokens`."""
    d, p = config.data.max_doms, config.data.max_pulses_per_dom
    return {
        "hierarchical": d * p * p + d * d,
        "flat": (d * p) ** 2,
        "flat_matched": matched_tokens(config) ** 2,
    }


def matched_tokens(config: ml_collections.ConfigDict) -> int:
    """K, the most pulses per event whose flat attention (K^2 pairs) costs no more than the
    hierarchical model's on the largest event: floor(sqrt(D P^2 + D^2))."""
    d, p = config.data.max_doms, config.data.max_pulses_per_dom
    return min(int(np.floor(np.sqrt(d * p * p + d * d))), d * p)


def test_config(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """`config` whose "eval" split is the study's test batches."""
    c = config.copy_and_resolve_references()
    c.data.eval_batches = config.study.test_batches
    return c


def param_counts(config: ml_collections.ConfigDict) -> dict[str, int]:
    """Parameters of each trained arm; raises when they differ by more than study.max_param_gap."""
    spec = data_packing.PackSpec.from_config(config)
    counts = {}
    for arm in TRAINED_ARMS:
        c = arm_config(config, arm, config.seed, config.data.root)
        counts[arm] = model_lib.num_params(model_lib.make_model(c), spec)
    gap = abs(counts["flat"] / counts["hierarchical"] - 1.0)
    logging.info(
        "study parameters: hierarchical %d, flat %d (gap %.1f%%)",
        counts["hierarchical"],
        counts["flat"],
        100 * gap,
    )
    if gap > config.study.max_param_gap:
        raise ValueError(
            f"study: the flat arm has {counts['flat']} parameters, the hierarchical one "
            f"{counts['hierarchical']} ({100 * gap:.1f}% apart, more than study.max_param_gap = "
            f"{config.study.max_param_gap}); set model.flat_layers / model.flat_mlp_dim."
        )
    return counts


def attention_pairs(
    spec: data_packing.PackSpec, config: ml_collections.ConfigDict
) -> dict[str, int]:
    """Query-key pairs one attention layer computes per pack (the token budget's cost): the
    flat arm attends over the whole pack (segment-masked), `flat_matched` over E rows of K."""
    return {
        "hierarchical": spec.pulse_rows * spec.pulse_row_len**2
        + spec.dom_rows * spec.dom_row_len**2,
        "flat": (spec.pulse_rows * spec.pulse_row_len) ** 2,
        "flat_matched": spec.events * matched_tokens(config) ** 2,
    }


def linefit(event: dict[str, np.ndarray]) -> np.ndarray:
    """Line-fit direction [3] (where the muon comes from) of one processed event.

    `event`: a `data_packing.EventProcessor` output (the pulses the models see). The fit is the
    least-squares line r(t) = r0 + v t through the pulses' DOM positions: v = sum (r - r_mean)
    (t - t_mean) / sum (t - t_mean)^2 over the non-auxiliary pulses (all pulses when fewer than
    two are clean); the muon travels along v, so it comes from -v. A degenerate fit gives +z.
    """
    pulses = event["pulses"]
    xyz = np.repeat(event["dom_features"][:, :3], event["dom_lengths"], axis=0).astype(np.float64)
    t = pulses[:, 0].astype(np.float64)
    clean = pulses[:, 2] < 0.5
    if clean.sum() >= 2:
        xyz, t = xyz[clean], t[clean]
    dt = t - t.mean()
    denom = float(np.sum(dt**2))
    velocity = ((xyz - xyz.mean(0)) * dt[:, None]).sum(0) / denom if denom > 0 else np.zeros(3)
    norm = np.linalg.norm(velocity)
    return -velocity / norm if norm > 0 else np.array([0.0, 0.0, 1.0])


def baseline_predictions(
    config: ml_collections.ConfigDict, root: str, source: data.IceCubeSource
) -> dict[str, np.ndarray]:
    """The two untrained arms on `source`: {"event_id" [N], "linefit" [N, 3], "mean_direction"
    [N, 3]} in source order."""
    processor = data_packing.make_processor(config, root)
    events = [processor(source[i]) for i in range(len(source))]
    meta = data.read_meta(root, "train", data.parse_batch_ids(config.data.train_batches))
    mean = direction_vector(meta["azimuth"], meta["zenith"]).mean(0)
    if np.linalg.norm(mean) < 1e-9:
        mean = np.array([0.0, 0.0, 1.0])
    return {
        "event_id": np.array([e["event_id"] for e in events], np.int64),
        "linefit": np.stack([linefit(e) for e in events]),
        "mean_direction": np.broadcast_to(mean, (len(events), 3)).copy(),
    }


def predict_test(config: ml_collections.ConfigDict, workdir: str, root: str, source):
    """`evaluate.predict_split` of the best checkpoint in `workdir` on `source`."""
    mesh = mesh_lib.make_mesh(config.mesh)
    parts = steps.build(config, mesh)
    state, _ = restore.restore_for_eval(config, workdir, parts)
    return evaluate.predict_split(
        parts.eval_step,
        state.params,
        source,
        data_packing.make_processor(config, root),
        parts.extras.spec,
        mesh,
        config.eval.global_batch_size,
    )


def prediction_path(workdir: str, arm: str, seed: int) -> str:
    return os.path.join(workdir, "study", f"predictions_{arm}_s{seed}.npz")


def _save(path: str, **arrays) -> None:
    tmp = f"{path}.{os.getpid()}.tmp.npz"
    np.savez(tmp, **arrays)
    os.replace(tmp, path)


def run_cells(config: ml_collections.ConfigDict, workdir: str) -> str | None:
    """Trains and predicts every trained arm x seed not done yet, and the baselines; returns the
    data root, or None when a run stopped early (preemption: rerun to go on)."""
    sc = config.study
    root = data.prepare(config, workdir)
    os.makedirs(os.path.join(workdir, "study"), exist_ok=True)
    param_counts(config)  # fails before any training when the arms are not matched
    test = data.load_split(test_config(config), root, "eval")
    for seed in sc.seeds:  # seed by seed: a study cut short still compares both arms
        for arm in [a for a in sc.arms if a in TRAINED_ARMS]:
            path = prediction_path(workdir, arm, seed)
            if os.path.exists(path):
                continue
            c = arm_config(config, arm, seed, root)
            arm_dir = os.path.join(workdir, "arms", arm, f"s{seed}")
            logging.info("=== study: arm %s, seed %d (%s)", arm, seed, arm_dir)
            start = time.perf_counter()
            summary = train.train_and_evaluate(c, arm_dir)
            seconds = time.perf_counter() - start
            if summary["step"] < c.train.num_steps and summary["stopped_at"] < 0:
                return None
            result = predict_test(c, arm_dir, root, test)
            _save(
                path,
                event_id=result["event_id"],
                pred=result["pred"],
                direction=result["direction"],
                num_pulses=result["num_pulses"],
                train_seconds=np.float64(seconds),
            )
            logging.info(
                "study %s seed %d: test mean angular error %.4f (%.0f s training)",
                arm,
                seed,
                evaluate.event_errors(result).mean(),
                seconds,
            )
    path = os.path.join(workdir, "study", "predictions_baselines.npz")
    if not os.path.exists(path):
        _save(path, **baseline_predictions(config, root, test))
    return root


def statistics(errors: np.ndarray, bins) -> dict[str, study_lib.Statistic]:
    """One arm's metrics as functions of test-event indices: the mean angular error over all
    events and per pulse-count bin. errors [S, N] radians (one row per seed); bins: (label,
    mask [N] bool) pairs, `metrics.size_bins` output."""

    def in_bin(mask):
        def fn(idx):
            chosen = idx[mask[idx]]
            return float(errors[:, chosen].mean()) if len(chosen) else float("nan")

        return fn

    out = {OVERALL: lambda idx: float(errors[:, idx].mean())}
    for label, mask in bins:
        out[f"pulses_{label}"] = in_bin(mask)
    return out


def arm_errors(
    config: ml_collections.ConfigDict, workdir: str
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray], dict[str, list[float]]]:
    """Every arm's per-event angular errors [S, N] (S = seeds; 1 for the baselines), the test
    events' truth (event_id, direction, num_pulses of the first trained run) and the trained arms'
    training seconds per seed."""
    sc = config.study
    baselines = dict(np.load(os.path.join(workdir, "study", "predictions_baselines.npz")))
    errors, seconds, truth = {}, {}, None
    for arm in [a for a in sc.arms if a in TRAINED_ARMS]:
        runs = [dict(np.load(prediction_path(workdir, arm, s))) for s in sc.seeds]
        for r in runs:
            if not np.array_equal(r["event_id"], baselines["event_id"]):
                raise RuntimeError(f"study: arm {arm} predicted other test events.")
        truth = truth or runs[0]
        errors[arm] = np.stack([evaluate.event_errors(r) for r in runs])
        seconds[arm] = [float(r["train_seconds"]) for r in runs]
    if truth is None:
        raise ValueError("config.study.arms: needs a trained arm (the labels come with it).")
    for arm in [a for a in sc.arms if a not in TRAINED_ARMS]:
        errors[arm] = evaluate.event_errors({**truth, "pred": baselines[arm]})[None]
    return errors, truth, seconds


def report(config: ml_collections.ConfigDict, workdir: str) -> dict:
    """Reads every arm's predictions, writes study/table.md, study.png, study.json; returns the
    `core.study.compare` result (plus parameter counts, per-seed errors, training times)."""
    sc = config.study
    arms = study_lib.arms_in_order(sc.arms, sc.reference)
    errors, truth, seconds = arm_errors(config, workdir)
    per_seed = {arm: [float(row.mean()) for row in errors[arm]] for arm in arms}
    bins = [b for b in metrics.size_bins(truth["num_pulses"], sc.pulse_bins) if b[1].any()]
    by_metric: dict[str, dict] = {}
    for arm in arms:
        for name, fn in statistics(errors[arm], bins).items():
            by_metric.setdefault(name, {})[arm] = fn
    num_events = len(truth["event_id"])
    result = study_lib.compare(
        by_metric, sc.reference, num_events, num_resamples=sc.bootstrap_resamples, seed=config.seed
    )
    labels = {OVERALL: "mean angular error (rad)"}
    labels.update({f"pulses_{b}": f"{b} pulses" for b, _ in bins})
    counts = param_counts(config)
    pairs = attention_pairs(data_packing.PackSpec.from_config(config), config)
    per_event = event_attention_pairs(config)
    trained = [a for a in arms if a in TRAINED_ARMS]
    overall = {**result, "metrics": {OVERALL: result["metrics"][OVERALL]}}
    by_bin = {**result, "metrics": {k: v for k, v in result["metrics"].items() if k != OVERALL}}
    text = study_lib.table(overall, labels)
    text += "\n\nBy number of pulses (before truncation), mean angular error (rad):\n\n"
    text += study_lib.table(by_bin, labels).split("\n\n")[0]
    text += (
        f"\n\nSeeds {tuple(sc.seeds)} (each event's error counted once per seed); events per "
        f"bin: {', '.join(f'{b} {int(m.sum())}' for b, m in bins)}. Parameters: "
        + ", ".join(f"{a} {counts[a]:,}" for a in trained)
        + ". Attention query-key pairs per layer for the largest event ("
        f"{config.data.max_doms} DOMs x {config.data.max_pulses_per_dom} pulses): "
        + ", ".join(
            f"{a} {per_event[a]:,}"
            + (f" (its first {matched_tokens(config)} clean pulses)" if a == "flat_matched" else "")
            for a in trained
        )
        + "; per pack (as computed here): "
        + ", ".join(f"{a} {pairs[a]:,}" for a in trained)
        + ". Training seconds per seed: "
        + "; ".join(f"{a} {', '.join(f'{s:.0f}' for s in v)}" for a, v in seconds.items())
        + "."
    )
    extra = {
        "seeds": list(sc.seeds),
        "per_seed_mean_angular_error": per_seed,
        "num_params": counts,
        "attention_pairs_per_pack": pairs,
        "attention_pairs_per_largest_event": per_event,
        "matched_tokens": matched_tokens(config),
        "train_seconds": seconds,
        "events_per_bin": {b: int(m.sum()) for b, m in bins},
    }
    return study_lib.save("neutrino", workdir, result, text, "test events", labels, extra)


def main(config: ml_collections.ConfigDict, workdir: str) -> dict[str, float]:
    """`jaxlab study`: all cells (resuming), then the report; returns flat scalars."""
    study_lib.require_block(config, "neutrino")
    unknown = set(config.study.arms) - set(ARMS)
    if unknown or config.study.reference not in config.study.arms:
        raise ValueError(
            f"config.study.arms {tuple(config.study.arms)} / reference "
            f"{config.study.reference!r}: arms must be among {ARMS}, the reference one of them."
        )
    if run_cells(config, workdir) is None:
        return {}
    return study_lib.flat(report(config, workdir), "study")
