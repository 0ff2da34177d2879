"""The augmentation study: its training sets, the chronological fractions, and a small run that
writes the table and figure and resumes cell by cell."""

import json
import os

import numpy as np
import pytest

from jaxlab.configs import sales as sales_config
from jaxlab.sales import data, data_windows, evaluate, study, train


def _real(n):
    rng = np.random.default_rng(0)
    return {
        "history_sales": rng.random((n, 30)).astype(np.float32),
        "history_features": rng.random((n, 30, 10)).astype(np.float32),
        "target_features": rng.random((n, 7, 8)).astype(np.float32),
        "target": rng.random((n, 7)).astype(np.float32),
        "index": np.arange(n, dtype=np.int32),
    }


@pytest.mark.parametrize("ratio", [0.5, 1.0, 2.0, None])
def test_training_set_is_real_plus_ratio_times_generated(ratio):
    real = _real(10)
    generated = 10.0 + np.arange(10 * 2 * 7, dtype=np.float32).reshape(10, 2, 7)  # [N, S, T]
    out = study.training_set(real, generated, ratio, seed=3)
    num_fake = 10 if ratio is None else int(round(ratio * 10))
    num_real = 0 if ratio is None else 10
    assert len(out["target"]) == num_real + num_fake
    np.testing.assert_array_equal(out["index"], np.arange(num_real + num_fake))
    # The real windows come first, unchanged.
    np.testing.assert_array_equal(out["target"][:num_real], real["target"][:num_real])
    # Each generated record is a real window's condition with one of its own samples as target.
    fake_target = out["target"][num_real:]
    assert np.all(fake_target >= 10.0)
    window = ((fake_target[:, 0] - 10.0) // 14).astype(int)
    np.testing.assert_array_equal(out["history_sales"][num_real:], real["history_sales"][window])
    pairs = {(int(w), float(t)) for w, t in zip(window, fake_target[:, 0], strict=True)}
    assert len(pairs) == num_fake  # no (window, sample) used twice


def test_chronological_subset_takes_the_earliest_windows(tmp_path):
    config = sales_config.get_config("tiny")
    sources = data_windows.load_windows(config, data.prepare(config, str(tmp_path)))
    train_source = sources["train"]
    subset = study.chronological_subset(train_source, 0.25)
    assert len(subset) == round(0.25 * len(train_source))
    dates = train_source.target_dates()
    chosen = dates[subset.indices]
    rest = np.delete(dates, subset.indices)
    assert chosen.max() <= rest.min()


@pytest.mark.slow
def test_small_study_writes_table_and_figure_and_resumes_by_cell(tmp_path, two_devices):
    config = sales_config.get_config("study_tiny")
    # What is checked is the study's bookkeeping, not how well its forecasters learn: 10 steps
    # (study_tiny: 40) of each of the 6 forecasters, with the best of 2 validation checks kept.
    config.forecaster.num_steps, config.forecaster.eval_every = 10, 5
    workdir = str(tmp_path)
    summary = train.train_and_evaluate(config, workdir)
    assert set(summary) >= {"study_f0.25_real_mae", "study_f1_aug_1_diff", "study_f1_tstr_mae"}
    out = os.path.join(workdir, "study")
    for fraction in config.study.fractions:
        cell = os.path.join(out, f"f{fraction:g}")
        for name in ("real", "aug_1", "tstr"):
            errors = np.load(os.path.join(cell, f"errors_{name}_s0.npy"))
            assert errors.shape == (summary["study_num_test_windows"],)
        with open(os.path.join(cell, "discriminative.json")) as f:
            assert 0.0 <= json.load(f)["discriminative_score"] <= 0.5
    # The reported MAE is the mean of the saved per-window errors (the independent formula).
    real = np.load(os.path.join(out, "f1", "errors_real_s0.npy"))
    assert summary["study_f1_real_mae"] == pytest.approx(float(real.mean()), rel=1e-6)
    aug = np.load(os.path.join(out, "f1", "errors_aug_1_s0.npy"))
    assert summary["study_f1_aug_1_diff"] == pytest.approx(float(aug.mean() - real.mean()), 1e-5)
    assert os.path.getsize(os.path.join(out, "mae_vs_fraction.png")) > 5000
    with open(os.path.join(out, "table.md")) as f:
        table = f.read()
    rows = [line for line in table.splitlines() if line.startswith("| ")]
    assert len(rows) == len(config.study.fractions) + 1  # header + one row each
    # A rerun finds every cell done: nothing is retrained, and evaluate rebuilds the same report.
    cells = [os.path.join(out, "f1", name) for name in os.listdir(os.path.join(out, "f1"))]
    cells = [p for p in cells if os.path.isfile(p)] + [
        os.path.join(out, "f1", "gan", "generated.npy")
    ]
    stamps = {p: os.path.getmtime(p) for p in cells}
    again = train.train_and_evaluate(config, workdir)
    assert again == summary
    assert stamps == {p: os.path.getmtime(p) for p in cells}
    metrics = evaluate.evaluate(config, workdir)
    assert metrics["study_f1_real_mae"] == summary["study_f1_real_mae"]
