"""Evaluation figures (matplotlib Agg, PNG); `zenith_figure` returns its figure (the train loop
logs it to TensorBoard at each evaluation)."""

from __future__ import annotations

from typing import Any

import matplotlib
import numpy as np

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def error_vs_size(result: dict[str, Any], path: str) -> None:
    """Mean and median angular error per bin of pulses and of DOMs per event."""
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.5), sharey=True)
    for ax, key, label in (
        (axes[0], "by_num_pulses", "pulses per event"),
        (axes[1], "by_num_doms", "DOMs per event"),
    ):
        bins = result[key]
        names = list(bins)
        x = np.arange(len(names))
        ax.plot(x, [bins[n]["mean"] for n in names], "o-", label="mean")
        ax.plot(x, [bins[n]["median"] for n in names], "s--", label="median")
        for xi, n in zip(x, names, strict=True):
            ax.annotate(
                f"n={bins[n]['count']}",
                (xi, bins[n]["mean"]),
                fontsize=7,
                textcoords="offset points",
                xytext=(0, 6),
                ha="center",
            )
        ax.set_xticks(x, names, rotation=30)
        ax.set_xlabel(label)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("angular error (rad)")
    axes[0].axhline(np.pi / 2, color="gray", lw=0.8, ls=":", label="constant guess ~ pi/2")
    axes[0].legend(fontsize=8)
    fig.suptitle(f"neutrino: mean angular error {result['mean_angular_error']:.3f} rad")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def zenith_scatter(zen_true: np.ndarray, zen_pred: np.ndarray, path: str) -> None:
    """Predicted against true zenith (radians)."""
    fig = zenith_figure(zen_true, zen_pred)
    fig.savefig(path, dpi=100)
    plt.close(fig)


def zenith_figure(
    zen_true: np.ndarray, zen_pred: np.ndarray, title: str = "neutrino: zenith"
) -> plt.Figure:
    """2-D histogram of predicted against true zenith [N] (radians, 40 x 40 bins over [0, pi]),
    400 x 400 px: a trained model fills the diagonal, a constant guess one horizontal line."""
    fig, ax = plt.subplots(figsize=(4, 4), dpi=100)
    ax.hist2d(zen_true, zen_pred, bins=40, range=[[0, np.pi], [0, np.pi]], cmap="viridis")
    ax.plot([0, np.pi], [0, np.pi], "w--", lw=1)
    ax.set(xlabel="true zenith (rad)", ylabel="predicted zenith (rad)", title=title)
    fig.tight_layout()
    return fig
