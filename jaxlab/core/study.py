"""Comparing a study's arms on the same held-out cases: paired bootstrap intervals, table, files.

A study trains several arms (model variants, ablations, baselines) on the same data and scores
them on the same held-out cases. What a reader needs is each arm's score and how far it is from
the reference arm, with an interval that says whether the gap is more than the luck of the test
set. The cases are resampled with replacement and every arm is scored on the same resample (a
paired bootstrap): the case-to-case difficulty every arm shares cancels, so the interval of a
difference is much narrower than the two arms' own intervals suggest.

A metric is given per arm as a function of case indices (`[N] int -> float`), so the same code
serves means of per-case values (accuracy, absolute error: `mean_of`) and metrics that are not
(macro F1 from a confusion matrix, RMSE). Outputs: `compare` -> a result dict, `table` -> a
markdown table, `figure` -> the differences with their intervals, `write` -> `table.md` and
`study.json` in one folder; `save` does figure, write and log for a task's `<workdir>/study`.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping, Sequence

import numpy as np
from absl import logging

Statistic = Callable[[np.ndarray], float]  # case indices [n] int -> the metric on those cases


def mean_of(values: np.ndarray) -> Statistic:
    """The statistic "mean of per-case `values` [N, ...] over the chosen cases" (accuracy as the
    mean of 0/1 correctness, MAE as the mean of absolute errors; extra axes, e.g. seeds, are
    averaged too)."""
    values = np.asarray(values, np.float64)
    return lambda idx: float(values[idx].mean())


def resample_indices(num_cases: int, num_resamples: int, seed: int) -> np.ndarray:
    """[R, N] case indices drawn with replacement; row r is bootstrap resample r."""
    if num_cases < 1:
        raise ValueError("study.resample_indices: no cases to resample.")
    return np.random.default_rng(seed).integers(0, num_cases, size=(num_resamples, num_cases))


def compare(
    metrics: Mapping[str, Mapping[str, Statistic]],
    reference: str,
    num_cases: int,
    *,
    num_resamples: int = 2000,
    seed: int = 0,
    level: float = 0.95,
) -> dict:
    """Every arm's metric, its difference to `reference` and percentile bootstrap intervals.

    Args:
      metrics: metric name -> arm name -> statistic of case indices. Every metric has the same
        arms, `reference` among them.
      reference: the arm the others are compared with.
      num_cases: N, the number of held-out cases the statistics index.
      num_resamples: bootstrap resamples R; all arms and metrics share the same R resamples.
      level: coverage of the intervals (0.95: the 2.5% and 97.5% quantiles).

    Returns:
      {"reference", "num_cases", "num_resamples", "level", "arms": [...], "metrics": {metric:
      {arm: {"value", "lo", "hi", "diff", "diff_lo", "diff_hi"}}}}: value on all cases, its own
      interval (lo, hi), diff = value - reference's value and its paired interval.
    """
    idx = resample_indices(num_cases, num_resamples, seed)
    everything = np.arange(num_cases)
    quantiles = [(1 - level) / 2, (1 + level) / 2]
    out: dict = {
        "reference": reference,
        "num_cases": int(num_cases),
        "num_resamples": int(num_resamples),
        "level": level,
        "arms": [],
        "metrics": {},
    }
    for metric, arms in metrics.items():
        if reference not in arms:
            raise ValueError(
                f"study.compare: metric {metric!r} has no reference arm {reference!r}."
            )
        if not out["arms"]:
            out["arms"] = list(arms)
        boot = {arm: np.array([fn(row) for row in idx]) for arm, fn in arms.items()}
        ref_value = float(arms[reference](everything))
        rows = {}
        for arm, fn in arms.items():
            value = float(fn(everything))
            lo, hi = np.quantile(boot[arm], quantiles)
            diff_lo, diff_hi = np.quantile(boot[arm] - boot[reference], quantiles)
            rows[arm] = {
                "value": value,
                "lo": float(lo),
                "hi": float(hi),
                "diff": value - ref_value,
                "diff_lo": float(diff_lo),
                "diff_hi": float(diff_hi),
            }
        out["metrics"][metric] = rows
    return out


def table(result: dict, labels: Mapping[str, str] | None = None, digits: int = 3) -> str:
    """Markdown: one row per arm; per metric its value [interval] and the difference to the
    reference [paired interval] ("reference" in the reference's row)."""
    labels = labels or {}
    metrics = list(result["metrics"])
    pct = f"{100 * result['level']:g}%"
    head = ["arm"]
    for m in metrics:
        name = labels.get(m, m)
        head += [f"{name} [{pct} CI]", f"diff to {result['reference']} [{pct} CI]"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for arm in result["arms"]:
        cells = [arm]
        for m in metrics:
            r = result["metrics"][m][arm]
            cells.append(f"{r['value']:.{digits}f} [{r['lo']:.{digits}f}, {r['hi']:.{digits}f}]")
            if arm == result["reference"]:
                cells.append("reference")
            else:
                lo, hi = r["diff_lo"], r["diff_hi"]
                cells.append(f"{r['diff']:+.{digits}f} [{lo:+.{digits}f}, {hi:+.{digits}f}]")
        lines.append("| " + " | ".join(cells) + " |")
    lines.append(
        f"\n{result['num_cases']} held-out cases; intervals: percentile bootstrap over cases, "
        f"{result['num_resamples']} resamples, the same resamples for every arm (paired)."
    )
    return "\n".join(lines)


def figure(
    result: dict, path: str, title: str = "", labels: Mapping[str, str] | None = None
) -> None:
    """One panel per metric: each arm's value with its own interval, the reference's value as a
    dashed line, and each other arm labelled with its difference and paired interval."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = labels or {}
    metrics = list(result["metrics"])
    arms = result["arms"]
    fig, axes = plt.subplots(
        1, len(metrics), figsize=(3.6 * len(metrics) + 0.8, 0.5 * len(arms) + 1.6), squeeze=False
    )
    y = np.arange(len(arms))[::-1]
    for ax, metric in zip(axes[0], metrics, strict=True):
        rows = [result["metrics"][metric][a] for a in arms]
        value = np.array([r["value"] for r in rows])
        err = np.array([[r["value"] - r["lo"], r["hi"] - r["value"]] for r in rows]).T
        ax.errorbar(value, y, xerr=err, fmt="o", color="C0", capsize=3, label="value")
        ref = result["metrics"][metric][result["reference"]]["value"]
        ax.axvline(ref, color="0.6", ls="--", lw=1)
        for yi, arm, r in zip(y, arms, rows, strict=True):
            if arm == result["reference"]:
                continue
            ax.annotate(
                f"{r['diff']:+.3f} [{r['diff_lo']:+.3f}, {r['diff_hi']:+.3f}]",
                (r["value"], yi),
                xytext=(0, 7),
                textcoords="offset points",
                ha="center",
                fontsize=7,
            )
        ax.set_yticks(y, arms)
        ax.set_ylim(-0.6, len(arms) - 0.3)
        ax.set_xlabel(labels.get(metric, metric))
    fig.suptitle(
        title
        or f"arms vs {result['reference']} (labels: difference [paired "
        f"{100 * result['level']:g}% CI])",
        fontsize=9,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def write(out_dir: str, result: dict, table_text: str, extra: Mapping | None = None) -> str:
    """Writes `table.md` and `study.json` ({**result, "table": ..., **extra}) into `out_dir`;
    returns the json's path."""
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, "table.md"), "w") as f:
        f.write(table_text + "\n")
    path = os.path.join(out_dir, "study.json")
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "w") as f:
        json.dump({**result, "table": table_text, **(extra or {})}, f, indent=2)
    os.replace(tmp, path)
    return path


def save(
    task: str,
    workdir: str,
    result: dict,
    text: str,
    cases: str,
    labels: Mapping[str, str] | None = None,
    extra: Mapping | None = None,
) -> dict:
    """A study's report tail: `<workdir>/study/` gets study.png (titled with the task and the
    number of held-out `cases`, e.g. "held-out cubes"), table.md and study.json; the table is
    logged. Returns {**result, **extra}."""
    out = os.path.join(workdir, "study")
    os.makedirs(out, exist_ok=True)
    level = f"{100 * result['level']:g}%"
    held_out = f"{result['num_cases']} {cases}"
    title = f"{task}: arms vs {result['reference']} on {held_out} (diff [paired {level} CI])"
    figure(result, os.path.join(out, "study.png"), title, labels)
    write(out, result, text, extra)
    logging.info("%s study:\n%s", task, text)
    return {**result, **(extra or {})}


def report(
    task: str,
    workdir: str,
    config,
    by_metric: Mapping[str, Mapping[str, Statistic]],
    num_cases: int,
    cases: str,
    labels: Mapping[str, str],
    notes: str,
    extra: Mapping,
) -> dict:
    """`compare` with the settings of `config.study` (reference arm, resamples) and `config.seed`,
    then `save` with the table and `notes` below it."""
    sc = config.study
    result = compare(
        by_metric, sc.reference, num_cases, num_resamples=sc.bootstrap_resamples, seed=config.seed
    )
    return save(task, workdir, result, f"{table(result, labels)}\n{notes}", cases, labels, extra)


def cell_config(config, seed: int, data_key: str, data_dir: str):
    """A copy of a study's config for one trained cell: its seed, and `config.data.<data_key>`
    pointing at the study's one dataset, written once before the arms (not re-generated)."""
    c = config.copy_and_resolve_references()
    c.seed = seed
    c.data[data_key] = data_dir
    c.data.synthetic = False
    return c


def require_block(config, task: str) -> None:
    """One clear error when `jaxlab study` is given a config without a `study` block."""
    if not config.get("study"):
        raise ValueError(
            f"config has no `study` block: use --config={task}:study (or {task}:study_tiny)."
        )


def flat(result: dict, prefix: str = "study") -> dict[str, float]:
    """A result as flat scalars for metrics records: <prefix>_<arm>_<metric> and
    <prefix>_<arm>_<metric>_diff (not for the reference)."""
    out = {}
    for metric, arms in result["metrics"].items():
        for arm, r in arms.items():
            out[f"{prefix}_{arm}_{metric}"] = r["value"]
            if arm != result["reference"]:
                out[f"{prefix}_{arm}_{metric}_diff"] = r["diff"]
    return out


def arms_in_order(names: Sequence[str], reference: str) -> list[str]:
    """The reference first, then the others in their given order (the table's row order)."""
    return [reference, *[n for n in names if n != reference]]
