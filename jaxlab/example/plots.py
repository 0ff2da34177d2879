"""Figures of the example task (matplotlib Agg): drawn here, saved or logged by the caller."""

from __future__ import annotations

import matplotlib
import numpy as np

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def prediction_scatter(target: np.ndarray, prediction: np.ndarray, title: str) -> plt.Figure:
    """Prediction against target [N] with the identity line, 400 x 400 px: a model that learned
    the planted signal puts the points on the line, one predicting the mean a horizontal band."""
    target, prediction = np.asarray(target).ravel(), np.asarray(prediction).ravel()
    fig, ax = plt.subplots(figsize=(4, 4), dpi=100)
    ax.scatter(target, prediction, s=4, alpha=0.5)
    lo, hi = float(target.min()), float(target.max())
    ax.plot([lo, hi], [lo, hi], "k--", lw=1)
    ax.set(xlabel="target", ylabel="prediction", title=title)
    fig.tight_layout()
    return fig


def close(fig: plt.Figure) -> None:
    plt.close(fig)
