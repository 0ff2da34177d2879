"""core/study.py: paired bootstrap intervals against the normal-theory formula, the files."""

import json

import numpy as np

from jaxlab.core import study


def _normal_interval(d: np.ndarray) -> tuple[float, float]:
    """mean(d) -/+ 1.96 sd(d) / sqrt(n): the large-sample 95% interval of a mean."""
    half = 1.959964 * d.std(ddof=1) / np.sqrt(len(d))
    return d.mean() - half, d.mean() + half


def test_paired_interval_matches_normal_theory_and_is_narrower_than_unpaired():
    rng = np.random.default_rng(0)
    n = 3000
    difficulty = rng.normal(0.0, 1.0, n)  # shared by both arms: cancels in the paired difference
    ref = difficulty + rng.normal(0.0, 0.3, n)
    arm = difficulty + 0.05 + rng.normal(0.0, 0.3, n)
    result = study.compare(
        {"err": {"ref": study.mean_of(ref), "arm": study.mean_of(arm)}},
        "ref",
        n,
        num_resamples=4000,
        seed=1,
    )
    r = result["metrics"]["err"]["arm"]
    assert abs(r["diff"] - (arm.mean() - ref.mean())) < 1e-12
    lo, hi = _normal_interval(arm - ref)
    width = hi - lo
    assert abs(r["diff_lo"] - lo) < 0.1 * width and abs(r["diff_hi"] - hi) < 0.1 * width
    # Unpaired (independent samples) the interval would be ~ 1.96 sqrt(var a/n + var b/n): ~3.5x.
    unpaired = 2 * 1.959964 * np.sqrt(arm.var(ddof=1) / n + ref.var(ddof=1) / n)
    assert unpaired > 3 * width
    # The arm's own interval is the one of its mean.
    own_lo, own_hi = _normal_interval(arm)
    assert abs(r["lo"] - own_lo) < 0.1 * (own_hi - own_lo)
    # The reference's difference to itself is exactly zero.
    ref_row = result["metrics"]["err"]["ref"]
    assert ref_row["diff"] == ref_row["diff_lo"] == ref_row["diff_hi"] == 0.0


def test_non_mean_statistic_and_shared_resamples():
    """A statistic that is not a mean (macro recall of 0/1 labels) is resampled like the rest;
    two arms with identical predictions differ by exactly 0 in every resample."""
    rng = np.random.default_rng(2)
    labels = rng.integers(0, 2, 400)
    pred_a = np.where(rng.random(400) < 0.8, labels, 1 - labels)

    def macro_recall(pred):
        def fn(idx):
            y, p = labels[idx], pred[idx]
            return float(np.mean([np.mean(p[y == c] == c) for c in (0, 1)]))

        return fn

    result = study.compare(
        {"recall": {"a": macro_recall(pred_a), "b": macro_recall(pred_a.copy())}},
        "a",
        400,
        num_resamples=300,
        seed=0,
    )
    b = result["metrics"]["recall"]["b"]
    assert b["diff"] == b["diff_lo"] == b["diff_hi"] == 0.0
    assert b["lo"] < macro_recall(pred_a)(np.arange(400)) < b["hi"]


def test_table_figure_and_files(tmp_path):
    rng = np.random.default_rng(0)
    correct = {"mv": rng.random(50) < 0.9, "sv": rng.random(50) < 0.6}
    result = study.compare(
        {"accuracy": {k: study.mean_of(v) for k, v in correct.items()}}, "mv", 50, num_resamples=200
    )
    text = study.table(result, {"accuracy": "test accuracy"})
    assert "| mv |" in text and "reference" in text and "test accuracy" in text
    study.figure(result, str(tmp_path / "study.png"))
    path = study.write(str(tmp_path), result, text, {"note": "x"})
    with open(path) as f:
        saved = json.load(f)
    assert saved["metrics"]["accuracy"]["sv"]["value"] == correct["sv"].mean()
    assert saved["note"] == "x" and (tmp_path / "table.md").read_text().startswith("| arm")
    assert (tmp_path / "study.png").stat().st_size > 0
    flat = study.flat(result)
    assert flat["study_sv_accuracy_diff"] == result["metrics"]["accuracy"]["sv"]["diff"]
