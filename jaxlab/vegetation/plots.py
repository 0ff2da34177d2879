"""PNG figures of the vegetation evaluation (matplotlib, Agg backend); `ndvi_strip` returns its
figure (the train loop logs it to TensorBoard at each validation)."""

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


def ndvi_strip(truth_ndvi: np.ndarray, pred_ndvi: np.ndarray, lead_days, title: str) -> plt.Figure:
    """NDVI target (NaN where cloudy: blank), forecast and forecast - target on a few target
    dates, 3 rows x K columns, at most 600 x 400 px.

    truth_ndvi, pred_ndvi [K, H, W]; lead_days [K]: days after the last context frame.
    """
    frames = truth_ndvi.shape[0]
    rows = [
        ("target", truth_ndvi, "YlGn", -0.2, 1.0),
        ("forecast", pred_ndvi, "YlGn", -0.2, 1.0),
        ("error", pred_ndvi - truth_ndvi, "RdBu", -0.5, 0.5),
    ]
    fig, axes = plt.subplots(
        len(rows), frames, figsize=(min(1.3 * frames + 1.0, 6.0), 4.0), dpi=100, squeeze=False
    )
    for r, (name, images, cmap, vmin, vmax) in enumerate(rows):
        for t in range(frames):
            shown = axes[r, t].imshow(images[t], cmap=cmap, vmin=vmin, vmax=vmax)
            axes[r, t].set_xticks([])
            axes[r, t].set_yticks([])
        axes[r, 0].set_ylabel(name, fontsize=7)
        bar = fig.colorbar(shown, ax=axes[r, :].tolist(), fraction=0.04, pad=0.02)
        bar.ax.tick_params(labelsize=5)
    for t, day in enumerate(lead_days):
        axes[0, t].set_title(f"+{int(day)}d", fontsize=7)
    fig.suptitle(title, fontsize=8)
    return fig


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


def forecast_strips(
    last_refl: np.ndarray,
    last_date,
    refl: np.ndarray,
    ndvi: np.ndarray,
    dates,
    path: str,
    title: str,
) -> None:
    """One cube's forecast: RGB and NDVI strips over the target dates, with colorbars.

    last_refl [H, W, 4]: the last best-available-pixel context frame (first column, for
    reference), refl [T, H, W, 4] and ndvi [T, H, W]: the forecast on `dates` [T].
    """
    frames = refl.shape[0]
    last_ndvi = (last_refl[..., 3] - last_refl[..., 2]) / (last_refl[..., 3] + last_refl[..., 2])
    columns = [(f"context\n{_day(last_date)}", last_refl, last_ndvi)]
    columns += [(_day(d), refl[t], ndvi[t]) for t, d in enumerate(dates)]
    fig, axes = plt.subplots(2, frames + 1, figsize=(1.0 * (frames + 1) + 1.2, 2.6), squeeze=False)
    for c, (label, frame_refl, frame_ndvi) in enumerate(columns):
        axes[0, c].imshow(rgb(frame_refl))
        ndvi_image = axes[1, c].imshow(frame_ndvi, cmap="YlGn", vmin=-0.2, vmax=1.0)
        axes[0, c].set_title(label, fontsize=5)
        for ax in axes[:, c]:
            ax.set_xticks([])
            ax.set_yticks([])
    axes[0, 0].set_ylabel("RGB", fontsize=6)
    axes[1, 0].set_ylabel("NDVI", fontsize=6)
    # RGB = 3.5 x reflectance of B04 / B03 / B02, clipped: each channel's scale in reflectance.
    stretch = matplotlib.cm.ScalarMappable(matplotlib.colors.Normalize(0, 1 / 3.5), "gray")
    rgb_bar = fig.colorbar(stretch, ax=axes[0, :].tolist(), fraction=0.01, pad=0.01)
    rgb_bar.set_label("reflectance", fontsize=5)
    ndvi_bar = fig.colorbar(ndvi_image, ax=axes[1, :].tolist(), fraction=0.01, pad=0.01)
    ndvi_bar.set_label("NDVI", fontsize=5)
    for bar in (rgb_bar, ndvi_bar):
        bar.ax.tick_params(labelsize=5)
    fig.suptitle(title, fontsize=7)
    fig.savefig(path, dpi=90)
    plt.close(fig)


def _day(date) -> str:
    return f"{np.datetime64(date, 'D')}"
