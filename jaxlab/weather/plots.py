"""PNG figures (matplotlib Agg): product maps with per-variable colormaps and units, diagnostics."""

from __future__ import annotations

import os

import matplotlib
import numpy as np

matplotlib.use("Agg")
import matplotlib.colors as mcolors  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402

from jaxlab.weather import data  # noqa: E402

# NWS-style reflectivity colours every 5 dBZ from 5 to 75 dBZ.
_REFC_COLORS = [
    "#04e9e7",
    "#019ff4",
    "#0300f4",
    "#02fd02",
    "#01c501",
    "#008e00",
    "#fdf802",
    "#e5bc00",
    "#fd9500",
    "#fd0000",
    "#d40000",
    "#bc0000",
    "#f800fd",
    "#9854c6",
]
REFC_CMAP = mcolors.ListedColormap(_REFC_COLORS, name="reflectivity").with_extremes(under="white")
REFC_NORM = mcolors.BoundaryNorm(np.arange(5, 80, 5), REFC_CMAP.N)
CMAPS = {
    "t2m": "RdYlBu_r",
    "d2m": "BrBG",
    "u10": "PuOr",
    "v10": "PuOr",
    "cape": "YlOrRd",
    "cin": "Blues_r",
}


def _map(field: np.ndarray, name: str, title: str, path: str, cmap=None, label=None) -> None:
    fig, ax = plt.subplots(figsize=(5, 3.4))
    if name == "refc" and cmap is None:
        im = ax.imshow(field, origin="lower", cmap=REFC_CMAP, norm=REFC_NORM)
    else:
        im = ax.imshow(field, origin="lower", cmap=cmap or CMAPS.get(name, "viridis"))
    cbar = fig.colorbar(im, ax=ax, shrink=0.85, extend="min" if name == "refc" else "neither")
    cbar.set_label(label or f"{name} [{data.UNITS[name]}]")
    ax.set(title=title, xticks=[], yticks=[])
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def products(out_dir, current, mean, spread, probs, members, num_plotted) -> None:
    """The five folders; fields [H, W, C] physical units; members [M, H, W, C]."""
    dirs = {
        k: os.path.join(out_dir, k)
        for k in (
            "01_current_state",
            "02_ensemble_mean",
            "03_ensemble_spread",
            "04_probability_maps",
            "05_sample_members",
        )
    }
    for d in dirs.values():
        os.makedirs(d, exist_ok=True)
    for v, name in enumerate(data.VARIABLES):
        _map(
            current[..., v],
            name,
            f"current {name}",
            os.path.join(dirs["01_current_state"], f"{name}.png"),
        )
        _map(
            mean[..., v],
            name,
            f"ensemble mean {name}",
            os.path.join(dirs["02_ensemble_mean"], f"{name}.png"),
        )
        _map(
            spread[..., v],
            name,
            f"ensemble spread {name}",
            os.path.join(dirs["03_ensemble_spread"], f"{name}.png"),
            cmap="magma",
            label=f"{name} spread [{data.UNITS[name]}]",
        )
    for key, (name, thr, p) in probs.items():
        _map(
            p[0],
            name,
            f"P({name} >= {thr:g} {data.UNITS[name]})",
            os.path.join(dirs["04_probability_maps"], f"{key}.png"),
            cmap="viridis",
            label="probability",
        )
    for mem in range(min(num_plotted, members.shape[0])):
        _map(
            members[mem, ..., 0],
            "refc",
            f"member {mem} refc",
            os.path.join(dirs["05_sample_members"], f"refc_member{mem:02d}.png"),
        )


def rank_histogram(ranks: np.ndarray, path: str) -> None:
    fig, axes = plt.subplots(1, len(data.VARIABLES), figsize=(2.2 * len(data.VARIABLES), 2.4))
    for ax, name, counts in zip(axes, data.VARIABLES, ranks, strict=True):
        ax.bar(np.arange(len(counts)), counts / max(counts.sum(), 1))
        ax.axhline(1 / len(counts), color="k", lw=0.8, ls="--")
        ax.set(title=name, xlabel="rank")
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def rank_histograms_by_lead(ranks: np.ndarray, lead: int, path: str) -> None:
    """ranks [K, C, M + 1] counts: one row per lead step, one panel per variable."""
    steps, channels, bins = ranks.shape
    fig, axes = plt.subplots(
        steps, channels, figsize=(2.2 * channels, 2.3 * steps), squeeze=False, sharey=True
    )
    for k in range(steps):
        for v, name in enumerate(data.VARIABLES):
            ax, counts = axes[k, v], ranks[k, v]
            ax.bar(np.arange(bins), counts / max(counts.sum(), 1))
            ax.axhline(1 / bins, color="k", lw=0.8, ls="--")
            ax.set(title=f"{name}, lead {(k + 1) * lead} h", xlabel="rank of observation")
            if v == 0:
                ax.set_ylabel("relative frequency")
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def def_comparison(results: dict, steps: int, lead: int, path: str) -> None:
    """CRPS, RMSE of the mean and spread/skill by lead for direct sampling, DEF and the
    deterministic forecaster (`compare/<system>/<score>/lead<k>` of metrics.json)."""
    hours = [(k + 1) * lead for k in range(steps)]
    scores = (("crps", "CRPS (standardised)"), ("rmse", "RMSE of the mean"),
              ("spread_skill", "spread / skill"))  # fmt: skip
    fig, axes = plt.subplots(1, len(scores), figsize=(4 * len(scores), 3.2))
    for ax, (score, label) in zip(axes, scores, strict=True):
        for system in ("direct", "def", "deterministic"):
            values = [results[f"compare/{system}/{score}/lead{k + 1}"] for k in range(steps)]
            ax.plot(hours, values, "o-", label=system)
        if score == "spread_skill":
            ax.axhline(1.0, color="k", lw=0.8, ls="--")
        ax.set(xlabel="lead time [h]", ylabel=label, title=label)
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def reliability(curves: dict, path: str) -> None:
    """One reliability diagram per event (forecast probability bins vs observed frequency), with
    the number of forecasts per bin below: a diagonal curve is reliable."""
    keys = list(curves)
    fig, axes = plt.subplots(
        2, len(keys), figsize=(4 * len(keys), 5.5), squeeze=False, height_ratios=(3, 1)
    )
    for j, key in enumerate(keys):
        r, ax, hist = curves[key], axes[0, j], axes[1, j]
        used = r["count"] > 0
        ax.plot([0, 1], [0, 1], "k--", lw=1)
        ax.plot(r["forecast"][used], r["observed"][used], "o-")
        title = key.replace("_ge_", " >= ")  # refc_ge_35 -> refc >= 35
        ax.set(xlabel="forecast probability", ylabel="observed frequency", title=title)
        ax.set(xlim=(0, 1), ylim=(0, 1))
        hist.bar((np.arange(len(r["count"])) + 0.5) / len(r["count"]), r["count"], width=0.09)
        hist.set(yscale="log", xlabel="forecast probability", ylabel="forecasts", xlim=(0, 1))
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def crps_by_lead(results: dict, steps: int, lead: int, path: str) -> None:
    hours = [(k + 1) * lead for k in range(steps)]
    fig, ax = plt.subplots(figsize=(4, 3))
    ax.plot(hours, [results[f"crps/lead{k + 1}"] for k in range(steps)], "o-", label="ensemble")
    ax.plot(
        hours,
        [results[f"persistence_crps/lead{k + 1}"] for k in range(steps)],
        "s--",
        label="persistence",
    )
    ax.axhline(results["climatology_crps"], color="gray", ls=":", label="climatology")
    ax.set(xlabel="lead time [h]", ylabel="CRPS (standardised)", title="CRPS by lead time")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def members_figure(truth: np.ndarray, members: np.ndarray, variable: str, title: str):
    """One variable of the true next state beside sampled members, [H, W] and [M, H, W]
    (standardised units, one colour scale): the figure logged at each evaluation in training."""
    panels = [("truth", truth)] + [(f"member {m}", field) for m, field in enumerate(members)]
    low = float(min(p.min() for _, p in panels))
    high = float(max(p.max() for _, p in panels))
    fig, axes = plt.subplots(
        1, len(panels), figsize=(min(1.4 * len(panels) + 0.6, 6.0), 2.2), dpi=100
    )
    for ax, (name, field) in zip(np.atleast_1d(axes), panels, strict=True):
        image = ax.imshow(field, origin="lower", vmin=low, vmax=high, cmap="viridis")
        ax.set_title(name, fontsize=8)
        ax.set_xticks([])
        ax.set_yticks([])
    fig.colorbar(image, ax=list(np.atleast_1d(axes)), shrink=0.8, label=f"{variable} (std units)")
    fig.suptitle(title, fontsize=9)
    return fig
