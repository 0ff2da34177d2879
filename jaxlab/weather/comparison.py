"""Ensemble systems side by side: per-case scores, two scoring protocols, paired bootstrap.

`evaluate` scores every system (direct sampling, DEF variants, the deterministic forecasters
alone) on the same held-out cases under two protocols:

- "standard": in the training period's standardised units, the forecast as it is (the units
  of every other weather score; a DEF variant that forecasts spatially standardised states is
  put back into those units with the *initial* analysis's domain mean and std, the only
  moments known at forecast time);
- "authors": DEF's authors' protocol: every member and the deterministic baseline is
  standardised over the grid and rescaled with the *truth's* domain mean and std at the valid
  time (`rescale_to_truth`), so no system is scored on its domain mean or variance. Numbers
  under it are not comparable with standard ones.

Per case, lead step and variable `CaseScores` keeps CRPS, fair CRPS, the squared error of the
ensemble mean, the ensemble variance, rank counts and the REFC >= 35 dBZ Brier terms; `summary`
turns them into scores with 95% intervals from a bootstrap over cases that resamples the same
cases for every system (paired), and differences against direct sampling.
"""

from __future__ import annotations

import json
import os

import jax.numpy as jnp
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from jaxlab.weather import data, metrics  # noqa: E402

PROTOCOLS = {
    "standard": "training-period standardised units; forecasts as they are (spatially "
    "standardised DEF states rescaled with the initial analysis's domain mean and std)",
    "authors": "DEF authors' protocol: every member and the deterministic baseline standardised "
    "over the grid, then rescaled with the truth's domain mean and std at the valid time",
}
# metrics.json prefix of each protocol's table.
PREFIX = {"standard": "compare", "authors": "compare_authors"}
SCORES = ("crps", "crps_fair", "rmse", "spread_skill", "rank_rel_entropy", "brier_skill")


def rescale_to_truth(ens: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """The authors' protocol: ens [M, H, W, C] standardised per member and channel over the grid
    (ddof = 1), times the truth's [H, W, C] domain std (ddof = 1) plus its domain mean."""
    mean, std = data.spatial_moments(jnp.asarray(truth))
    return np.asarray(data.spatial_standardise(jnp.asarray(ens)) * std + mean)


def to_training_units(states: np.ndarray, init: np.ndarray) -> np.ndarray:
    """Spatially standardised states [..., H, W, C] back in training-period units with the
    initial analysis's [H, W, C] domain mean and std (the standard protocol's DEF "authors")."""
    mean, std = data.spatial_moments(jnp.asarray(init))
    return np.asarray(jnp.asarray(states) * std + mean)


class CaseScores:
    """Per-case sums of one system under one protocol: arrays [N, K, C] (cases, lead steps,
    variables), ranks [N, K, C, M + 1], Brier terms [N, K] of the event `event`."""

    def __init__(self, members: int, event: tuple[str, float] = ("refc", 35.0)):
        self.members, self.event = members, event
        self.rows: dict[str, list] = {
            k: []
            for k in ("crps", "crps_fair", "sq_err", "var", "ranks", "brier", "events", "points")
        }

    def add(self, ens: np.ndarray, truth: np.ndarray, normaliser) -> None:
        """ens [K, M, H, W, C], truth [K, H, W, C] (standardised units of the protocol)."""
        k_steps, m = ens.shape[0], ens.shape[1]
        c = len(data.VARIABLES)
        crps, fair = np.zeros((k_steps, c)), np.zeros((k_steps, c))
        sq_err, var = np.zeros((k_steps, c)), np.zeros((k_steps, c))
        ranks = np.zeros((k_steps, c, m + 1), np.int64)
        brier, events, points = np.zeros(k_steps), np.zeros(k_steps), np.zeros(k_steps)
        v_event = data.VARIABLES.index(self.event[0])
        for k in range(k_steps):
            e, y = ens[k], truth[k]
            crps[k] = np.asarray(metrics.grid_mean_crps(e, y))
            fair[k] = np.asarray(metrics.grid_mean_crps(e, y, fair=True)) if m > 1 else crps[k]
            sq_err[k] = ((ens[k].mean(0) - truth[k]) ** 2).mean(axis=(0, 1))
            var[k] = ens[k].var(0, ddof=min(1, m - 1)).mean(axis=(0, 1))
            for v in range(c):
                ranks[k, v] = metrics.rank_histogram(ens[k][..., v], truth[k][..., v])
            phys_e = normaliser.decode(ens[k])[..., v_event]
            phys_y = normaliser.decode(truth[k])[..., v_event] >= self.event[1]
            prob = (phys_e >= self.event[1]).mean(0)
            brier[k] = np.sum((prob - phys_y) ** 2)
            events[k], points[k] = phys_y.sum(), phys_y.size
        for name, value in (
            ("crps", crps),
            ("crps_fair", fair),
            ("sq_err", sq_err),
            ("var", var),
            ("ranks", ranks),
            ("brier", brier),
            ("events", events),
            ("points", points),
        ):
            self.rows[name].append(value)

    def arrays(self) -> dict[str, np.ndarray]:
        return {k: np.stack(v) for k, v in self.rows.items()}


def _scores(a: dict[str, np.ndarray], idx: np.ndarray, members: int) -> dict[str, np.ndarray]:
    """Scores over the cases `idx` [B, N] (each row one resample): {score: [B, K, C]} and
    "brier_skill" [B, K]; variable means as "<score>/mean" [B, K]."""
    mean = {k: a[k][idx].mean(1) for k in ("crps", "crps_fair", "sq_err", "var")}
    rmse, spread = np.sqrt(mean["sq_err"]), np.sqrt(mean["var"])
    factor = np.sqrt((members + 1) / members)
    out = {
        "crps": mean["crps"],
        "crps_fair": mean["crps_fair"],
        "rmse": rmse,
        "spread_skill": spread * factor / np.maximum(rmse, 1e-12),
    }
    hist = a["ranks"][idx].sum(1).astype(np.float64)  # [B, K, C, M + 1]
    p = hist / np.maximum(hist.sum(-1, keepdims=True), 1.0)
    plogp = np.where(p > 0, p * np.log(np.where(p > 0, p, 1.0)), 0.0)
    out["rank_rel_entropy"] = np.log(p.shape[-1]) + plogp.sum(-1)
    for name in ("crps", "crps_fair", "rmse", "rank_rel_entropy"):
        out[f"{name}/mean"] = out[name].mean(-1)
    # The same aggregation as evaluate.spread_skill: mean spread over mean RMSE.
    out["spread_skill/mean"] = (spread * factor).mean(-1) / np.maximum(rmse.mean(-1), 1e-12)
    base = a["events"].sum() / max(a["points"].sum(), 1.0)  # event frequency over all cases
    brier = a["brier"][idx].sum(1) / a["points"][idx].sum(1)
    # No event in the sample: the skill is undefined (NaN), not perfect.
    out["brier_skill"] = 1.0 - brier / (base * (1 - base)) if 0 < base < 1 else np.nan * brier
    return out


def summary(
    systems: dict[str, CaseScores],
    protocol: str,
    num_boot: int = 1000,
    seed: int = 0,
    reference: str = "direct",
) -> dict:
    """metrics.json entries of one protocol, prefix `PREFIX[protocol]`:
    `<prefix>/<system>/<score>/lead<k>` (variable mean) and `<prefix>/<system>/<score>/<var>/
    lead<k>` with `..._ci95` [lo, hi]; `<prefix>/<system>/brier_skill/refc_ge_35/lead<k>`;
    `<prefix>_diff/<system>-<reference>/<score>/lead<k>` = [difference, lo, hi] (paired: every
    system resampled with the same cases)."""
    prefix, out = PREFIX[protocol], {}
    arrays = {name: s.arrays() for name, s in systems.items()}
    n = next(iter(arrays.values()))["crps"].shape[0]
    gen = np.random.default_rng(seed)
    idx = gen.integers(0, n, size=(num_boot, n))
    full = np.arange(n)[None]
    point = {name: _scores(a, full, systems[name].members) for name, a in arrays.items()}
    boot = {name: _scores(a, idx, systems[name].members) for name, a in arrays.items()}
    k_steps = point[next(iter(point))]["crps"].shape[1]
    event = metrics.event_key(*next(iter(systems.values())).event)
    for name in systems:
        p, b = point[name], boot[name]
        for k in range(k_steps):
            lead = f"lead{k + 1}"
            for score in SCORES[:-1]:
                out[f"{prefix}/{name}/{score}/{lead}"] = float(p[f"{score}/mean"][0, k])
                out[f"{prefix}/{name}/{score}/{lead}_ci95"] = _ci(b[f"{score}/mean"][:, k])
                for v, var in enumerate(data.VARIABLES):
                    out[f"{prefix}/{name}/{score}/{var}/{lead}"] = float(p[score][0, k, v])
                    out[f"{prefix}/{name}/{score}/{var}/{lead}_ci95"] = _ci(b[score][:, k, v])
            out[f"{prefix}/{name}/brier_skill/{event}/{lead}"] = float(p["brier_skill"][0, k])
            out[f"{prefix}/{name}/brier_skill/{event}/{lead}_ci95"] = _ci(b["brier_skill"][:, k])
            for v, var in enumerate(data.VARIABLES):
                hist = arrays[name]["ranks"][:, k, v].sum(0)
                out[f"{prefix}/{name}/rank_histogram/{var}/{lead}"] = hist.tolist()
        if name == reference or reference not in systems:
            continue
        for k in range(k_steps):
            lead = f"lead{k + 1}"
            for score in ("crps", "crps_fair", "rmse", "spread_skill"):
                d = boot[name][f"{score}/mean"][:, k] - boot[reference][f"{score}/mean"][:, k]
                d0 = p[f"{score}/mean"][0, k] - point[reference][f"{score}/mean"][0, k]
                out[f"{prefix}_diff/{name}-{reference}/{score}/{lead}"] = [float(d0), *_ci(d)]
            d = boot[name]["brier_skill"][:, k] - boot[reference]["brier_skill"][:, k]
            d0 = p["brier_skill"][0, k] - point[reference]["brier_skill"][0, k]
            out[f"{prefix}_diff/{name}-{reference}/brier_skill/{lead}"] = [float(d0), *_ci(d)]
    return out


def _ci(samples: np.ndarray) -> list[float]:
    """[2.5%, 97.5%] percentiles of bootstrap samples (NaN when the score is undefined)."""
    if not np.isfinite(samples).any():
        return [float("nan"), float("nan")]
    lo, hi = np.nanpercentile(samples, [2.5, 97.5])
    return [float(lo), float(hi)]


def figure(results: dict, systems: list[str], k_steps: int, lead: int, path: str) -> None:
    """Spread/skill (top) and CRPS (bottom) by lead for each system, one column per protocol,
    with the bootstrap intervals as error bars."""
    hours = [(k + 1) * lead for k in range(k_steps)]
    fig, axes = plt.subplots(2, len(PREFIX), figsize=(5.5 * len(PREFIX), 6.5), squeeze=False)
    for j, (protocol, prefix) in enumerate(PREFIX.items()):
        for i, score in enumerate(("spread_skill", "crps")):
            ax = axes[i, j]
            for name in systems:
                key = f"{prefix}/{name}/{score}/lead"
                if f"{key}1" not in results:
                    continue
                values = np.array([results[f"{key}{k + 1}"] for k in range(k_steps)])
                ci = np.array([results[f"{key}{k + 1}_ci95"] for k in range(k_steps)])
                err = np.abs(ci.T - values[None])
                ax.errorbar(hours, values, yerr=err, fmt="o-", capsize=3, label=name)
            if score == "spread_skill":
                ax.axhline(1.0, color="k", lw=0.8, ls="--")
            ax.set(
                xlabel="lead time [h]",
                ylabel=score.replace("_", " "),
                title=f"{score.replace('_', ' ')}, {protocol} protocol",
            )
    axes[0, 0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def markdown_table(results: dict, systems: list[str], k_steps: int, lead: int) -> str:
    """The README table: per protocol, lead and system the variable-mean scores with their 95%
    intervals, and the REFC >= 35 dBZ Brier skill."""
    lines = []
    for protocol, prefix in PREFIX.items():
        lines += [
            f"\n{protocol} protocol: {PROTOCOLS[protocol]}\n",
            "| lead | system | CRPS | fair CRPS | RMSE of mean | spread/skill | rank KL "
            "| BSS refc>=35 |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for k in range(k_steps):
            for name in systems:
                key = f"{prefix}/{name}"
                if f"{key}/crps/lead{k + 1}" not in results:
                    continue
                cells = []
                for score in (
                    "crps",
                    "crps_fair",
                    "rmse",
                    "spread_skill",
                    "rank_rel_entropy",
                    f"brier_skill/{metrics.event_key('refc', 35)}",
                ):
                    value = results[f"{key}/{score}/lead{k + 1}"]
                    lo, hi = results[f"{key}/{score}/lead{k + 1}_ci95"]
                    cells.append(f"{value:.3f} [{lo:.3f}, {hi:.3f}]")
                lines.append(f"| {(k + 1) * lead} h | {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def write(out_dir: str, results: dict, systems: list[str], k_steps: int, lead: int) -> None:
    """def_comparison.png, def_comparison.md and the protocol labels in protocols.json."""
    figure(results, systems, k_steps, lead, os.path.join(out_dir, "def_comparison.png"))
    with open(os.path.join(out_dir, "def_comparison.md"), "w") as f:
        f.write(markdown_table(results, systems, k_steps, lead))
    with open(os.path.join(out_dir, "protocols.json"), "w") as f:
        json.dump({PREFIX[p]: text for p, text in PROTOCOLS.items()}, f, indent=2)
