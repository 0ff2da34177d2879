"""Writes the example task's dataset: `regression_<split>.npz` with a planted signal.

y = x . w + 0.5 sin(2 x_0) + noise, x ~ N(0, 1)^F. A linear model gets most of the way; the sine
term rewards the MLP's hidden layer. Predicting the mean (the baseline) scores var(y).
"""

from __future__ import annotations

import os

import numpy as np

from jaxlab.example.format import split_path

NOISE_STD = 0.05


def write_dataset(directory: str, *, num_train: int, num_eval: int, num_features: int, seed: int):
    """Writes train and eval splits (same planted function, disjoint draws); idempotent."""
    os.makedirs(directory, exist_ok=True)
    rng = np.random.default_rng(seed)
    weights = rng.normal(size=num_features) / np.sqrt(num_features)
    for split, size in (("train", num_train), ("eval", num_eval)):
        path = split_path(directory, split)
        x = rng.normal(size=(size, num_features)).astype(np.float32)
        y = x @ weights + 0.5 * np.sin(2.0 * x[:, 0]) + NOISE_STD * rng.normal(size=size)
        if os.path.exists(path):
            continue
        # Written under a temporary name then renamed: processes of a multi-host job may race.
        tmp = f"{path}.{os.getpid()}.tmp.npz"
        np.savez(tmp, x=x, y=y.astype(np.float32))
        os.replace(tmp, path)
