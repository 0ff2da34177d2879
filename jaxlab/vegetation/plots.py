"""PNG figures of the vegetation evaluation (matplotlib, Agg backend)."""

from __future__ import annotations

import matplotlib
import numpy as np

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def rgb(reflectance: np.ndarray) -> np.ndarray:
    """[..., 4] (B02, B03, B04, B8A) reflectance -> [..., 3] displayable RGB in [0, 1]."""
    return np.clip(reflectance[..., [2, 1, 0]] * 3.5, 0, 1)


def maps(truth_refl, pred_refl, truth_ndvi, pred_ndvi, path: str, title: str) -> None:
    """Per target frame: RGB truth / prediction and NDVI truth / prediction / error.

    truth_refl, pred_refl [T, H, W, 4]; truth_ndvi (NaN where cloudy), pred_ndvi [T, H, W].
    """
    frames = truth_ndvi.shape[0]
    rows = [
        ("RGB truth", rgb(np.nan_to_num(truth_refl)), None),
        ("RGB forecast", rgb(pred_refl), None),
        ("NDVI truth", truth_ndvi, ("YlGn", -0.2, 1)),
        ("NDVI forecast", pred_ndvi, ("YlGn", -0.2, 1)),
        ("NDVI error", pred_ndvi - truth_ndvi, ("RdBu", -0.5, 0.5)),
    ]
    fig, axes = plt.subplots(len(rows), frames, figsize=(1.1 * frames, 1.2 * len(rows)))
    for r, (name, images, cmap) in enumerate(rows):
        for t in range(frames):
            ax = axes[r, t]
            if cmap is None:
                ax.imshow(images[t])
            else:
                ax.imshow(images[t], cmap=cmap[0], vmin=cmap[1], vmax=cmap[2])
            ax.set_xticks([])
            ax.set_yticks([])
            if t == 0:
                ax.set_ylabel(name, fontsize=6)
            if r == 0:
                ax.set_title(f"+{5 * (t + 1)}d", fontsize=6)
    fig.suptitle(title, fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def pixel_series(
    context_days, context_ndvi, target_days, truth, forecast, persistence, path, title: str
) -> None:
    """NDVI time series of a few pixels: context (clear), truth (clear), forecast, persistence.

    context_ndvi [Tc, P], truth / forecast / persistence [Tt, P] (NaN where cloudy).
    """
    pixels = truth.shape[1]
    fig, axes = plt.subplots(1, pixels, figsize=(3.2 * pixels, 2.6), squeeze=False)
    for p in range(pixels):
        ax = axes[0, p]
        ax.plot(context_days, context_ndvi[:, p], "ko", ms=3, label="context")
        ax.plot(target_days, truth[:, p], "go", ms=3, label="truth")
        ax.plot(target_days, forecast[:, p], "b-", label="forecast")
        ax.plot(target_days, persistence[:, p], "r--", label="persistence")
        ax.set(xlabel="day in cube", ylim=(-0.2, 1.0))
        if p == 0:
            ax.set_ylabel("NDVI")
            ax.legend(fontsize=6)
    fig.suptitle(title, fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def delta_amplitude(true_amp: np.ndarray, pred_amp: np.ndarray, path: str) -> None:
    """Mean |delta| per horizon [T] of truth and prediction (clear pixels): does the forecast
    move as far from the BAP as reality does, or collapse towards persistence?"""
    horizon = 5 * np.arange(1, len(true_amp) + 1)
    fig, ax = plt.subplots(figsize=(4.5, 3))
    ax.plot(horizon, true_amp, "g-o", ms=3, label="true |delta|")
    ax.plot(horizon, pred_amp, "b-o", ms=3, label="predicted |delta|")
    ax.set(
        xlabel="lead time (days)", ylabel="mean |delta| (normalised)", title="signal diagnostics"
    )
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
