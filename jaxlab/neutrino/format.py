"""File-format facts of the Kaggle "IceCube - Neutrinos in Deep Ice" layout, shared by the
readers (`data.py`, `predict.py`), the evaluation and the demo-data writer (`synthetic.py`):

    sensor_geometry.csv            sensor_id, x, y, z (metres)
    <split>_meta.parquet           batch_id, event_id, first_pulse_index, last_pulse_index,
                                   azimuth, zenith (test: without azimuth / zenith)
    <split>/batch_<n>.parquet      event_id, sensor_id, time (ns), charge (p.e.), auxiliary

and the direction convention of the (azimuth, zenith) labels.
"""

from __future__ import annotations

import os

import numpy as np


def meta_path(root: str, split: str) -> str:
    return os.path.join(root, f"{split}_meta.parquet")


def batch_path(root: str, split: str, batch_id: int) -> str:
    return os.path.join(root, split, f"batch_{batch_id}.parquet")


def geometry_path(root: str) -> str:
    return os.path.join(root, "sensor_geometry.csv")


def direction_vector(azimuth: np.ndarray, zenith: np.ndarray) -> np.ndarray:
    """[..., 3] unit vectors (cos az sin zen, sin az sin zen, cos zen)."""
    return np.stack(
        [np.cos(azimuth) * np.sin(zenith), np.sin(azimuth) * np.sin(zenith), np.cos(zenith)], -1
    )
