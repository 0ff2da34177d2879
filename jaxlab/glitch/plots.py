"""Figures of the glitch evaluation, written as PNG (matplotlib Agg); `*_figure` functions
return the figure (the train loop logs the validation confusion matrix to TensorBoard)."""

from __future__ import annotations

from collections.abc import Sequence

import matplotlib
import numpy as np

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def confusion_matrix(
    confusion: np.ndarray, classes: Sequence[str], path: str, title: str = ""
) -> None:
    """Row-normalised confusion matrix (recall on the diagonal), counts annotated where > 0."""
    fig = confusion_matrix_figure(confusion, classes, title)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def confusion_matrix_figure(
    confusion: np.ndarray,
    classes: Sequence[str],
    title: str = "",
    figsize: tuple[float, float] | None = None,
    dpi: float = 120,
) -> plt.Figure:
    """The row-normalised confusion matrix [C, C] (true rows, predicted columns) with class names
    on both axes; each non-empty cell's fraction is written in it when the cells are large
    enough to read (always at the default size, which grows with C)."""
    confusion = np.asarray(confusion, np.float64)
    rows = confusion.sum(axis=1, keepdims=True)
    normalised = np.divide(confusion, rows, out=np.zeros_like(confusion), where=rows > 0)
    n = len(classes)
    if figsize is None:
        figsize = (0.45 * n + 3, 0.45 * n + 2)
    cell_px = 0.75 * min(figsize) * dpi / max(n, 1)  # about 3/4 of the height is the matrix
    label_size = min(8.0, max(3.0, 0.5 * cell_px * 72 / dpi))
    fig, ax = plt.subplots(figsize=figsize, dpi=dpi)
    image = ax.imshow(normalised, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(n), classes, rotation=90, fontsize=label_size)
    ax.set_yticks(range(n), classes, fontsize=label_size)
    ax.set(xlabel="predicted", ylabel="true", title=title or "confusion matrix (row-normalised)")
    if cell_px >= 24:
        for i in range(n):
            for j in range(n):
                if confusion[i, j] > 0:
                    color = "white" if normalised[i, j] > 0.5 else "black"
                    ax.text(
                        j,
                        i,
                        f"{normalised[i, j]:.2f}",
                        ha="center",
                        va="center",
                        fontsize=5,
                        color=color,
                    )
    fig.colorbar(image, ax=ax, fraction=0.04)
    fig.tight_layout()
    return fig


def view_importance(
    view_weights: np.ndarray,
    labels: np.ndarray,
    classes: Sequence[str],
    durations: Sequence[str],
    path: str,
) -> None:
    """Mean fusion attention weight per view (columns) for each true class (rows)."""
    n, v = len(classes), view_weights.shape[1]
    table = np.full((n, v), np.nan)
    for c in range(n):
        if np.any(labels == c):
            table[c] = view_weights[labels == c].mean(axis=0)
    fig, ax = plt.subplots(figsize=(2 + 1.2 * v, 0.35 * n + 2))
    image = ax.imshow(
        table, cmap="viridis", vmin=0, vmax=max(np.nanmax(table), 1e-6), aspect="auto"
    )
    ax.set_xticks(range(v), [f"{d} s" for d in durations])
    ax.set_yticks(range(n), classes, fontsize=8)
    for i in range(n):
        for j in range(v):
            if np.isfinite(table[i, j]):
                ax.text(
                    j, i, f"{table[i, j]:.2f}", ha="center", va="center", fontsize=7, color="white"
                )
    ax.set(xlabel="view (time window)", title="mean fusion weight per view and class")
    fig.colorbar(image, ax=ax, fraction=0.05)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def prediction(
    views: Sequence[np.ndarray],
    durations: Sequence[str],
    weights: np.ndarray,
    top: Sequence[tuple[str, float]],
    title: str,
    path: str,
) -> None:
    """One sample: its views ([H, W] gray, as the model saw them, resized) side by side, then a
    bar chart of the fusion weight of each view, with the top classes and probabilities."""
    n = len(views)
    fig, axes = plt.subplots(1, n + 1, figsize=(2.6 * n + 3.2, 3.2))
    for ax, view, dur in zip(axes[:n], views, durations, strict=True):
        ax.imshow(view, cmap="viridis", vmin=0, vmax=1, aspect="auto")
        ax.set(title=f"{dur} s", xticks=[], yticks=[])
    axes[0].set_ylabel("frequency (log, high at top)")
    bars = axes[n]
    bars.bar(range(n), weights, color="tab:blue")
    bars.set_xticks(range(n), [f"{d} s" for d in durations])
    bars.set(ylim=(0, 1), ylabel="fusion weight", title="view weights")
    text = "\n".join(f"{name}: {prob:.3f}" for name, prob in top)
    bars.text(0.98, 0.97, text, transform=bars.transAxes, ha="right", va="top", fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
