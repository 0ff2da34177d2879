"""Normalisation statistics of the vegetation task: per-band reflectance range, weather moments.

Computed once on the training track (`compute_normalisation`, deterministic: fixed cube picks and
a fixed-seed pixel subsample) and saved as `<workdir>/normalisation.json`; evaluation and predict
read exactly those numbers back (predict.py: from the model folder, the bundle's source workdir,
or recomputed from the config's training data).
"""

from __future__ import annotations

import json
import os

import numpy as np


class Normalisation:
    """Per-band 2nd-98th percentile range and per-feature weather mean / std, as JSON."""

    def __init__(self, stats: dict[str, list[float]]):
        self.band_low = np.asarray(stats["band_low"], np.float32)
        self.band_high = np.asarray(stats["band_high"], np.float32)
        self.band_median = np.asarray(stats["band_median"], np.float32)
        self.weather_mean = np.asarray(stats["weather_mean"], np.float32)
        self.weather_std = np.asarray(stats["weather_std"], np.float32)
        self.stats = stats

    def bands(self, x: np.ndarray) -> np.ndarray:
        return ((x - self.band_low) / (self.band_high - self.band_low)).astype(np.float32)

    def unbands(self, x: np.ndarray) -> np.ndarray:
        return (x * (self.band_high - self.band_low) + self.band_low).astype(np.float32)

    def weather(self, features: np.ndarray) -> np.ndarray:
        return ((features - self.weather_mean) / self.weather_std).astype(np.float32)

    def save(self, path: str) -> None:
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        tmp = f"{path}.{os.getpid()}.tmp"
        with open(tmp, "w") as f:
            json.dump(self.stats, f, indent=2)
        os.replace(tmp, path)

    @classmethod
    def load(cls, path: str) -> Normalisation:
        with open(path) as f:
            return cls(json.load(f))


def compute_normalisation(source, max_cubes: int, percentiles) -> Normalisation:
    """Band percentiles over clear pixels and weather-feature moments of up to `max_cubes`."""
    picks = np.unique(np.linspace(0, len(source) - 1, min(max_cubes, len(source))).astype(int))
    rng = np.random.default_rng(0)
    pixels, weather = [], []
    for i in picks:
        raw = source.read_raw(int(i))
        values = raw["frames"][raw["clear"]]  # [N, 4]
        if len(values) > 20_000:
            values = values[rng.choice(len(values), 20_000, replace=False)]
        pixels.append(values)
        weather.append(raw["weather"])
    pixels = np.concatenate(pixels)
    if len(pixels) == 0:
        raise ValueError(f"No clear pixel in {len(picks)} training cubes: cannot normalise.")
    low, high = np.percentile(pixels, percentiles, axis=0)
    weather = np.concatenate(weather)
    stats = {
        "band_low": low.tolist(),
        "band_high": np.maximum(high, low + 1e-3).tolist(),
        "band_median": np.median(pixels, axis=0).tolist(),
        "weather_mean": weather.mean(0).tolist(),
        "weather_std": np.maximum(weather.std(0), 1e-3).tolist(),
        "num_cubes": int(len(picks)),
    }
    return Normalisation(stats)
