"""The multi-view study: does fusing the four time windows beat one window, and a merged CNN?

GravityViT's claim is that the four Gravity Spy views (0.5, 1.0, 2.0, 4.0 s windows of the same
Q-transform) carry complementary information that cross-attention fusion uses. The study trains,
on the same data and with the same seeds, and scores on the same test glitches:

  vit_multiview  the reference: one shared ViT over the four views, cross-attention fusion, MLP
                 head (`model.MultiViewViT`)
  vit_single     the same ViT on one view (`study.single_view`, 1.0 s as in the seed's single-view
                 runs), a linear head (`model.SingleViewViT`)
  cnn_merged     Bahaadini et al.'s CNN on the four views tiled 2 x 2 (`model.CNNBaseline`)

Each arm x seed is an ordinary training run (`train.train_and_evaluate`, in
`<workdir>/arms/<arm>/s<seed>`, resumable, best checkpoint by validation accuracy) whose best
checkpoint then predicts the test split; its predicted classes go to
`<workdir>/study/predictions_<arm>_s<seed>.npy`. A rerun skips finished cells. The report
(`report`) scores the arms on the test glitches: accuracy, macro F1 and the accuracy on the
classes of the synthetic data's time-scale pairs (`study.time_scale_classes`, the pairs of
`synthetic.TIME_SCALE_PAIRS`: alike in the 1.0 s window), each with its difference to the
reference and a paired bootstrap 95% interval over test glitches (`core.study`); with several
seeds a glitch's prediction counts once per seed inside every resample. Files:
`study/table.md`, `study/study.png`, `study/study.json`.
"""

from __future__ import annotations

import os

import ml_collections
import numpy as np
from absl import logging

from jaxlab.core import mesh as mesh_lib
from jaxlab.core import restore
from jaxlab.core import study as study_lib
from jaxlab.glitch import data, evaluate, metrics, steps, train

ARMS = ("vit_multiview", "vit_single", "cnn_merged")
METRIC_LABELS = {
    "accuracy": "accuracy",
    "f1_macro": "macro F1",
    "time_scale_accuracy": "accuracy, time-scale classes",
}


def arm_config(
    config: ml_collections.ConfigDict, arm: str, seed: int, data_dir: str
) -> ml_collections.ConfigDict:
    """`config` for one arm and seed, reading the study's one dataset in `data_dir`."""
    c = study_lib.cell_config(config, seed, "dir", data_dir)
    if arm == "vit_multiview":
        c.model.name, c.data.multi_view = "vit_multiview", True
    elif arm == "vit_single":
        c.model.name, c.data.multi_view = "vit", False
        c.data.view = config.study.single_view
    elif arm == "cnn_merged":
        c.model.name, c.data.multi_view = "cnn", True
        c.model.pretrained = ""  # timm weights are for the ViT encoder
        c.optim.lr = config.study.cnn_lr
        c.data.image_size = config.study.cnn_image_size or c.data.image_size
    else:
        raise ValueError(f"config.study.arms: unknown arm {arm!r}; expected one of {ARMS}.")
    return c


def predict_test(config: ml_collections.ConfigDict, workdir: str, source) -> np.ndarray:
    """Predicted class [N] of the best checkpoint in `workdir` on `source` (the test split)."""
    mesh = mesh_lib.make_mesh(config.mesh)
    parts = steps.build(config, mesh, num_classes=len(source.classes))
    state, _ = restore.restore_for_eval(config, workdir, parts)
    result = evaluate.predict_split(
        parts.eval_step, state.params, source, mesh, config.eval.global_batch_size
    )
    return result["probs"].argmax(-1).astype(np.int32)


def prediction_path(workdir: str, arm: str, seed: int) -> str:
    return os.path.join(workdir, "study", f"predictions_{arm}_s{seed}.npy")


def run_cells(config: ml_collections.ConfigDict, workdir: str) -> tuple[str, np.ndarray] | None:
    """Trains and predicts every arm x seed not done yet; returns (data_dir, test labels [N]),
    or None when a run stopped early (preemption: rerun to go on)."""
    sc = config.study
    data_dir = data.prepare(config, workdir)
    os.makedirs(os.path.join(workdir, "study"), exist_ok=True)
    labels = None
    for arm in sc.arms:
        for seed in sc.seeds:
            c = arm_config(config, arm, seed, data_dir)
            test = data.load(c, data_dir, "test")
            labels = test.labels
            path = prediction_path(workdir, arm, seed)
            if os.path.exists(path):
                continue
            arm_dir = os.path.join(workdir, "arms", arm, f"s{seed}")
            logging.info("=== study: arm %s, seed %d (%s)", arm, seed, arm_dir)
            result = train.train_and_evaluate(c, arm_dir)
            if "stopped_epoch" not in result:
                return None
            predicted = predict_test(c, arm_dir, test)
            tmp = f"{path}.{os.getpid()}.tmp.npy"
            np.save(tmp, predicted)
            os.replace(tmp, path)
            logging.info(
                "study %s seed %d: test accuracy %.4f", arm, seed, np.mean(predicted == labels)
            )
    return data_dir, labels


def statistics(
    labels: np.ndarray, predicted: np.ndarray, num_classes: int, subset: np.ndarray
) -> dict[str, study_lib.Statistic]:
    """The study's metrics of one arm as functions of test-case indices.

    labels [N]; predicted [S, N] (one row per seed); subset [N] bool, the time-scale classes.
    """

    def confusion(idx):
        return sum(
            metrics.confusion_matrix(labels[idx], row[idx], num_classes) for row in predicted
        )

    def subset_accuracy(idx):
        chosen = idx[subset[idx]]
        return float(correct[:, chosen].mean()) if len(chosen) else float("nan")

    correct = (predicted == labels[None]).astype(np.float64)  # [S, N]
    return {
        "accuracy": lambda idx: float(correct[:, idx].mean()),
        "f1_macro": lambda idx: metrics.summary(confusion(idx))["f1_macro"],
        "time_scale_accuracy": subset_accuracy,
    }


def report(config: ml_collections.ConfigDict, workdir: str, labels: np.ndarray) -> dict:
    """Reads every arm's predictions, writes study/table.md, study.png, study.json; returns the
    `core.study.compare` result (plus the per-arm, per-seed accuracies)."""
    sc = config.study
    classes = tuple(config.data.classes)
    subset = np.isin(labels, [classes.index(c) for c in sc.time_scale_classes if c in classes])
    by_metric: dict[str, dict] = {m: {} for m in METRIC_LABELS}
    per_seed = {}
    arms = study_lib.arms_in_order(sc.arms, sc.reference)
    for arm in arms:
        predicted = np.stack([np.load(prediction_path(workdir, arm, s)) for s in sc.seeds])
        per_seed[arm] = [float(np.mean(row == labels)) for row in predicted]
        for name, fn in statistics(labels, predicted, len(classes), subset).items():
            by_metric[name][arm] = fn
    notes = (
        f"Seeds {tuple(sc.seeds)} (each glitch's prediction counted once per seed); "
        f"time-scale classes: {', '.join(sc.time_scale_classes)} "
        f"({int(subset.sum())} test glitches). Majority class: "
        f"{np.bincount(labels).max() / len(labels):.3f}."
    )
    extra = {
        "per_seed_accuracy": per_seed,
        "seeds": list(sc.seeds),
        "time_scale_classes": list(sc.time_scale_classes),
        "num_time_scale_cases": int(subset.sum()),
    }
    return study_lib.report(
        "glitch",
        workdir,
        config,
        by_metric,
        len(labels),
        "test glitches",
        METRIC_LABELS,
        notes,
        extra,
    )


def main(config: ml_collections.ConfigDict, workdir: str) -> dict[str, float]:
    """`jaxlab study`: all cells (resuming), then the report; returns flat scalars."""
    study_lib.require_block(config, "glitch")
    done = run_cells(config, workdir)
    if done is None:
        return {}
    result = report(config, workdir, done[1])
    return study_lib.flat(result, "study")
