"""Figures of the sales evaluation, written as PNG (matplotlib Agg); `generated_vs_real` returns
its figure (the GAN loop logs it to TensorBoard at each evaluation)."""

from __future__ import annotations

from collections.abc import Sequence

import matplotlib
import numpy as np

from jaxlab.sales import metrics as metrics_lib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

DAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")


def plot_samples(history: np.ndarray, real: np.ndarray, samples: np.ndarray, path: str) -> None:
    """Real target vs generated samples for the same condition; history [K, H], real [K, T],
    samples [K, S, T] (all normalised)."""
    k, h = history.shape
    t = real.shape[1]
    fig, axes = plt.subplots(k, 1, figsize=(7, 1.8 * k), sharex=True, squeeze=False)
    for i, ax in enumerate(axes[:, 0]):
        ax.plot(np.arange(h), history[i], color="0.4", lw=1, label="history")
        for s in range(samples.shape[1]):
            ax.plot(
                np.arange(h, h + t),
                samples[i, s],
                color="C1",
                alpha=0.5,
                lw=1,
                label="generated" if s == 0 else None,
            )
        ax.plot(np.arange(h, h + t), real[i], color="C0", lw=2, label="real")
    axes[0, 0].legend(loc="upper left", fontsize=7)
    axes[-1, 0].set_xlabel("day")
    fig.suptitle("sales: real vs generated 7-day targets for the same condition")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def generated_vs_real(
    history: np.ndarray, real: np.ndarray, generated: np.ndarray, title: str
) -> plt.Figure:
    """A few windows, one panel each (2 columns, 600 x 400 px): history, then the real and the
    generated target for the same condition; history [K, H], real and generated [K, T]
    (normalised)."""
    k, h = history.shape
    t = real.shape[1]
    cols = min(k, 2)
    rows = -(-k // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(6, 4), dpi=100, sharex=True, squeeze=False)
    for i, ax in enumerate(axes.ravel()):
        if i >= k:
            ax.set_axis_off()
            continue
        ax.plot(np.arange(h), history[i], color="0.4", lw=1, label="history")
        ax.plot(np.arange(h, h + t), real[i], color="C0", lw=2, label="real")
        ax.plot(np.arange(h, h + t), generated[i], color="C1", lw=1.5, label="generated")
        ax.tick_params(labelsize=6)
    axes[0, 0].legend(loc="upper left", fontsize=6)
    for ax in axes[-1]:
        ax.set_xlabel("day", fontsize=7)
    fig.suptitle(title, fontsize=8)
    fig.tight_layout()
    return fig


def plot_distributions(real: np.ndarray, fake: np.ndarray, first_dow: np.ndarray, path: str):
    """Per-day-of-week means and within-window autocorrelation, real vs generated."""
    fig, (ax1, ax2, ax3) = plt.subplots(1, 3, figsize=(12, 3.2))
    width = 0.4
    x = np.arange(7)
    ax1.bar(x - width / 2, metrics_lib.weekday_profile(real, first_dow), width, label="real")
    ax1.bar(x + width / 2, metrics_lib.weekday_profile(fake, first_dow), width, label="generated")
    ax1.set_xticks(x, DAYS)
    ax1.set_title("mean by day of week")
    ax1.legend(fontsize=7)
    lags = np.arange(1, real.shape[1] - 1)
    ax2.plot(lags, metrics_lib.autocorrelation(real, len(lags)), "o-", label="real")
    ax2.plot(lags, metrics_lib.autocorrelation(fake, len(lags)), "o-", label="generated")
    ax2.set(title="autocorrelation", xlabel="lag (days)")
    bins = np.linspace(0, max(real.max(), fake.max(), 1e-3), 40)
    ax3.hist(real.ravel(), bins, alpha=0.5, density=True, label="real")
    ax3.hist(fake.ravel(), bins, alpha=0.5, density=True, label="generated")
    ax3.set(title="daily values (normalised)", yscale="log")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def plot_training_curves(records: Sequence[dict], path: str) -> None:
    """Wasserstein estimate, gradient penalty and both losses from the GAN's metrics.jsonl."""
    names = ("wasserstein", "gradient_penalty", "critic_loss", "gen_loss")
    fig, axes = plt.subplots(1, len(names), figsize=(3.2 * len(names), 2.8))
    for ax, name in zip(axes, names, strict=True):
        rows = [r for r in records if name in r]
        ax.plot([r["step"] for r in rows], [r[name] for r in rows])
        ax.set(title=name, xlabel="step")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
