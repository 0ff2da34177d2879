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


def reliability(curves: dict, path: str) -> None:
    fig, ax = plt.subplots(figsize=(4, 4))
    ax.plot([0, 1], [0, 1], "k--", lw=1)
    for key, r in curves.items():
        used = r["count"] > 0
        ax.plot(r["forecast"][used], r["observed"][used], "o-", label=key)
    ax.set(xlabel="forecast probability", ylabel="observed frequency", title="reliability")
    ax.legend(fontsize=8)
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
