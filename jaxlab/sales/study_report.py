"""The augmentation study's table and figure, from the per-cell files `study.run_study` writes.

Per fraction: real-only test MAE; for each ratio, the augmented MAE and the difference
(augmented - real) with a 95% paired-bootstrap interval over test windows (per-window errors
averaged over the seeds first, so the interval is about the training-set choice, not one seed's
luck); TSTR MAE (train on generated only, test on real); the GAN's discriminative score. Rows
that are not finished yet are left out. Writes `study/table.md`, `study/mae_vs_fraction.png` and
`study/summary.json`.
"""

from __future__ import annotations

import glob
import json
import os

import matplotlib
import ml_collections
import numpy as np

from jaxlab.sales import metrics as metrics_lib
from jaxlab.sales import model as model_lib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def baselines(test: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Per-window MAE [N] of the naive forecasts: history mean, history median, same weekday."""
    history, target = test["history_sales"], test["target"]
    seasonal = np.asarray(
        model_lib.weekday_history(history, test["history_features"], test["target_features"])
    )[..., 0]
    return {
        "naive": np.mean(np.abs(history.mean(axis=1, keepdims=True) - target), axis=1),
        "median": np.mean(np.abs(np.median(history, axis=1, keepdims=True) - target), axis=1),
        "seasonal_naive": np.mean(np.abs(seasonal - target), axis=1),
    }


def _errors(directory: str, name: str, seeds) -> np.ndarray | None:
    """Per-window errors averaged over the seeds [N], or None unless every seed is done."""
    paths = [os.path.join(directory, f"errors_{name}_s{s}.npy") for s in seeds]
    if not all(os.path.exists(p) for p in paths):
        return None
    return np.mean([np.load(p) for p in paths], axis=0)


def _interval(errors: np.ndarray, num_resamples: int, seed: int) -> tuple[float, float]:
    idx = np.random.default_rng(seed).integers(0, len(errors), size=(num_resamples, len(errors)))
    return tuple(float(q) for q in np.quantile(errors[idx].mean(axis=1), [0.025, 0.975]))


def summarise(config: ml_collections.ConfigDict, workdir: str) -> list[dict]:
    """One dict per finished fraction: MAEs, differences and intervals, TSTR, discriminative."""
    sc, resamples = config.study, config.eval.bootstrap_resamples
    rows = []
    for fraction in sc.fractions:
        directory = os.path.join(workdir, "study", f"f{fraction:g}")
        real = _errors(directory, "real", sc.seeds)
        if real is None:
            continue
        row = {"fraction": fraction, "real_mae": float(real.mean())}
        row["real_lo"], row["real_hi"] = _interval(real, resamples, config.seed)
        for ratio in sc.ratios:
            aug = _errors(directory, f"aug_{ratio:g}", sc.seeds)
            if aug is None:
                continue
            both = {"abs": real, "sq": np.square(real)}, {"abs": aug, "sq": np.square(aug)}
            boot = metrics_lib.paired_bootstrap(*both, num_resamples=resamples, seed=config.seed)
            row[f"aug_{ratio:g}"] = {
                "mae": boot["mae_b"],
                "diff": boot["mae_diff"],
                "lo": boot["mae_diff_lo"],
                "hi": boot["mae_diff_hi"],
                "band": _interval(aug, resamples, config.seed),
            }
        tstr = _errors(directory, "tstr", sc.seeds)
        if tstr is not None:
            row["tstr_mae"] = float(tstr.mean())
        disc_path = os.path.join(directory, "discriminative.json")
        if os.path.exists(disc_path):
            with open(disc_path) as f:
                row["discriminative_score"] = json.load(f)["discriminative_score"]
        rows.append(row)
    return rows


def table(rows: list[dict], ratios, base: dict[str, float], num_windows: dict) -> str:
    """Markdown table of `summarise` rows."""
    head = ["fraction", "train windows", "real only"]
    head += [f"+gen x{r:g}: diff [95% CI]" for r in ratios] + ["TSTR", "disc. score"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in rows:
        cells = [
            f"{row['fraction']:g}",
            str(num_windows.get(row["fraction"], "")),
            f"{row['real_mae']:.4f}",
        ]
        for r in ratios:
            a = row.get(f"aug_{r:g}")
            cells.append(f"{a['diff']:+.4f} [{a['lo']:+.4f}, {a['hi']:+.4f}]" if a else "")
        cells.append(f"{row['tstr_mae']:.4f}" if "tstr_mae" in row else "")
        disc = row.get("discriminative_score")
        cells.append(f"{disc:.3f}" if disc is not None else "")
        lines.append("| " + " | ".join(cells) + " |")
    lines.append(
        "\nTest MAE, normalised scale; diff = augmented - real (negative: augmentation helps). "
        f"Naive baselines: history mean {base['naive']:.4f}, history median {base['median']:.4f}, "
        f"same weekday {base['seasonal_naive']:.4f}."
    )
    return "\n".join(lines)


def figure(rows: list[dict], ratios, base: dict[str, float], path: str) -> None:
    """Test MAE vs fraction of the training windows, 95% bootstrap bands, naive lines."""
    fractions = np.array([r["fraction"] for r in rows])
    fig, ax = plt.subplots(figsize=(6.5, 4))
    series = [
        ("real only", [r["real_mae"] for r in rows], [(r["real_lo"], r["real_hi"]) for r in rows])
    ]
    for ratio in ratios:
        done = [r for r in rows if f"aug_{ratio:g}" in r]
        if len(done) == len(rows):
            series.append(
                (
                    f"real + generated x{ratio:g}",
                    [r[f"aug_{ratio:g}"]["mae"] for r in done],
                    [r[f"aug_{ratio:g}"]["band"] for r in done],
                )
            )
    for i, (label, mae, band) in enumerate(series):
        band = np.asarray(band)
        ax.plot(fractions, mae, "o-", color=f"C{i}", label=label, lw=1.5)
        ax.fill_between(fractions, band[:, 0], band[:, 1], color=f"C{i}", alpha=0.2)
    if all("tstr_mae" in r for r in rows):
        ax.plot(
            fractions,
            [r["tstr_mae"] for r in rows],
            "x--",
            color="0.3",
            label="generated only (TSTR)",
        )
    naive_lines = (("naive", ":", "history mean"), ("seasonal_naive", "-.", "same weekday"))
    for name, style, label in (*naive_lines, ("median", "--", "history median")):
        ax.axhline(base[name], color="0.5", ls=style, lw=1, label=label)
    ax.set_xscale("log")
    ax.set_xlabel("fraction of training windows (chronological)")
    ax.set_ylabel("test MAE (normalised)")
    ax.legend(fontsize=7)
    ax.set_title("sales: LSTM test MAE vs amount of real data", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def report(config: ml_collections.ConfigDict, workdir: str, test: dict[str, np.ndarray]) -> dict:
    """Writes study/table.md, study/mae_vs_fraction.png and study/summary.json; returns the
    summary ({"rows": [...], "baselines": {...}})."""
    rows = summarise(config, workdir)
    base = {k: float(v.mean()) for k, v in baselines(test).items()}
    out = os.path.join(workdir, "study")
    os.makedirs(out, exist_ok=True)
    counts = {}
    for path in glob.glob(os.path.join(out, "f*", "gan", "generated.npy")):
        fraction = float(os.path.basename(os.path.dirname(os.path.dirname(path)))[1:])
        counts[fraction] = int(np.load(path, mmap_mode="r").shape[0])
    text = table(rows, config.study.ratios, base, counts)
    with open(os.path.join(out, "table.md"), "w") as f:
        f.write(text + "\n")
    if rows:
        figure(rows, config.study.ratios, base, os.path.join(out, "mae_vs_fraction.png"))
    summary = {
        "rows": rows,
        "baselines": base,
        "num_windows": counts,
        "num_test_windows": len(test["target"]),
        "table": text,
    }
    with open(os.path.join(out, "summary.json"), "w") as f:
        json.dump(summary, f, indent=2)
    return summary


def flat(summary: dict) -> dict[str, float]:
    """A report as flat scalars: study_f<fraction>_real_mae, study_f<fraction>_aug_<r>_diff,
    study_f<fraction>_tstr_mae, study_f<fraction>_discriminative_score, study_baseline_*."""
    out = {f"study_baseline_{k}_mae": v for k, v in summary.get("baselines", {}).items()}
    if "num_test_windows" in summary:
        out["study_num_test_windows"] = summary["num_test_windows"]
    for row in summary.get("rows", []):
        prefix = f"study_f{row['fraction']:g}"
        for key, value in row.items():
            if key.startswith("aug_"):
                out[f"{prefix}_{key}_diff"] = value["diff"]
            elif key in ("real_mae", "tstr_mae", "discriminative_score"):
                out[f"{prefix}_{key}"] = value
    return out
