"""PNG figures (matplotlib Agg): product maps with per-variable colormaps and units, diagnostics.

Maps are drawn in the grid's own row / column space (no reprojection) with latitude and longitude
lines from the grid's coordinates (`graticule`: the 2-D `latitude` / `longitude` that ecCodes
decodes from the GRIB2 and the Zarr store keeps). No state or coast outlines: no installed
dependency ships them for offline use (cartopy downloads Natural Earth on first use).
"""

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


# Latitude / longitude line spacings (degrees) a map may use; the finest giving <= 6 lines.
_GRATICULE_STEPS = (0.1, 0.2, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 15.0, 20.0, 30.0)


def _degrees(value: float, positive: str, negative: str) -> str:
    return f"{abs(value):g}°{positive if value >= 0 else negative}"


def graticule(ax, latitude: np.ndarray, longitude: np.ndarray, max_points: int = 240) -> dict:
    """Draws latitude and longitude lines, labelled (40°N, 100°W), over a map of the grid.

    The map is an `imshow(field, origin="lower")` of the [H, W] grid, so pixel (row i, column j)
    is at (x=j, y=i); the lines are contours of the grid's own `latitude` / `longitude` [H, W]
    (degrees; longitudes east, 0..360 or -180..180), at a round spacing giving a few lines
    across the map. Contoured on every `stride`-th point (the coordinates are smooth, so this
    is exact to well under a pixel on HRRR's 1059 x 1799 grid, and quick).

    Returns {"latitude": levels, "longitude": levels, "sets": the two ContourSets}.
    """
    lat = np.asarray(latitude, np.float64)
    lon = (np.asarray(longitude, np.float64) + 180.0) % 360.0 - 180.0
    height, width = lat.shape
    stride = max(1, max(height, width) // max_points)
    rows = np.unique(np.r_[np.arange(0, height, stride), height - 1])
    cols = np.unique(np.r_[np.arange(0, width, stride), width - 1])
    out: dict = {"sets": []}
    for key, values, label in (
        ("latitude", lat[np.ix_(rows, cols)], lambda v: _degrees(v, "N", "S")),
        ("longitude", lon[np.ix_(rows, cols)], lambda v: _degrees(v, "E", "W")),
    ):
        low, high = float(values.min()), float(values.max())
        step = next((s for s in _GRATICULE_STEPS if (high - low) / s <= 6), _GRATICULE_STEPS[-1])
        levels = np.arange(np.ceil(low / step), np.floor(high / step) + 1) * step
        out[key] = levels
        if len(levels) == 0 or low == high:
            continue
        lines = ax.contour(cols, rows, values, levels=levels, colors="0.15", linewidths=0.5,
                           alpha=0.7, linestyles="--")  # fmt: skip
        ax.clabel(lines, fmt=label, fontsize=7, inline=True)
        out["sets"].append(lines)
    ax.set(xlim=(-0.5, width - 0.5), ylim=(-0.5, height - 0.5))
    return out


def _map(
    field: np.ndarray, name: str, title: str, path: str, cmap=None, label=None, latlon=None
) -> None:
    """One map PNG; `latlon` = (latitude, longitude) [H, W] adds the graticule."""
    fig, ax = plt.subplots(figsize=(5, 3.4))
    if name == "refc" and cmap is None:
        im = ax.imshow(field, origin="lower", cmap=REFC_CMAP, norm=REFC_NORM)
    else:
        im = ax.imshow(field, origin="lower", cmap=cmap or CMAPS.get(name, "viridis"))
    cbar = fig.colorbar(im, ax=ax, shrink=0.85, extend="min" if name == "refc" else "neither")
    cbar.set_label(label or f"{name} [{data.UNITS[name]}]")
    ax.set(title=title, xticks=[], yticks=[])
    if latlon is not None:
        graticule(ax, *latlon)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def products(
    out_dir, current, mean, spread, probs, members, num_plotted, latitude=None, longitude=None
) -> None:
    """The five folders; fields [H, W, C] physical units; members [M, H, W, C]; `latitude`,
    `longitude` [H, W] (the grid's coordinates) draw latitude / longitude lines on every map."""
    latlon = None if latitude is None else (latitude, longitude)
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
        for folder, field, title in (
            ("01_current_state", current, f"current {name}"),
            ("02_ensemble_mean", mean, f"ensemble mean {name}"),
        ):
            path = os.path.join(dirs[folder], f"{name}.png")
            _map(field[..., v], name, title, path, latlon=latlon)
        _map(
            spread[..., v],
            name,
            f"ensemble spread {name}",
            os.path.join(dirs["03_ensemble_spread"], f"{name}.png"),
            cmap="magma",
            label=f"{name} spread [{data.UNITS[name]}]",
            latlon=latlon,
        )
    for key, (name, thr, p) in probs.items():
        _map(
            p[0],
            name,
            f"P({name} >= {thr:g} {data.UNITS[name]})",
            os.path.join(dirs["04_probability_maps"], f"{key}.png"),
            cmap="viridis",
            label="probability",
            latlon=latlon,
        )
    for mem in range(min(num_plotted, members.shape[0])):
        _map(
            members[mem, ..., 0],
            "refc",
            f"member {mem} refc",
            os.path.join(dirs["05_sample_members"], f"refc_member{mem:02d}.png"),
            latlon=latlon,
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
