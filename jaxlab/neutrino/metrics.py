"""The competition metric and its breakdowns (numpy, float64, on the host).

Kaggle "IceCube - Neutrinos in Deep Ice" scores the mean over events of the angle between the
true and predicted directions, given as azimuth / zenith in radians:

    arccos(clip(sin z1 sin z2 cos(a1 - a2) + cos z1 cos z2, -1, 1))

`angular_dist_score` follows the competition's reference implementation term by term (it expands
cos(a1 - a2) as ca1 ca2 + sa1 sa2 and takes abs of the arccos).
"""

from __future__ import annotations

import numpy as np


def vector_to_angles(vector: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """[N, 3] (any norm) -> azimuth in [0, 2 pi), zenith in [0, pi]."""
    vector = np.asarray(vector, np.float64)
    norm = np.linalg.norm(vector, axis=-1)
    norm = np.where(norm > 0, norm, 1.0)
    azimuth = np.mod(np.arctan2(vector[..., 1], vector[..., 0]), 2 * np.pi)
    zenith = np.arccos(np.clip(vector[..., 2] / norm, -1.0, 1.0))
    return azimuth, zenith


def angular_errors(az_true, zen_true, az_pred, zen_pred) -> np.ndarray:
    """Per-event angle (radians) between true and predicted directions, competition formula."""
    az_true, zen_true, az_pred, zen_pred = (
        np.asarray(a, np.float64) for a in (az_true, zen_true, az_pred, zen_pred)
    )
    sa1, ca1 = np.sin(az_true), np.cos(az_true)
    sz1, cz1 = np.sin(zen_true), np.cos(zen_true)
    sa2, ca2 = np.sin(az_pred), np.cos(az_pred)
    sz2, cz2 = np.sin(zen_pred), np.cos(zen_pred)
    scalar_prod = sz1 * sz2 * (ca1 * ca2 + sa1 * sa2) + cz1 * cz2
    return np.abs(np.arccos(np.clip(scalar_prod, -1.0, 1.0)))


def angular_dist_score(az_true, zen_true, az_pred, zen_pred) -> float:
    """The competition score: mean angular error in radians."""
    return float(np.mean(angular_errors(az_true, zen_true, az_pred, zen_pred)))


def size_bins(sizes: np.ndarray, edges: tuple[int, ...]) -> list[tuple[str, np.ndarray]]:
    """(label, mask) per bin [edges[i], edges[i+1]) plus an open last bin."""
    bins = []
    bounds = list(edges) + [np.inf]
    for lo, hi in zip(bounds[:-1], bounds[1:], strict=True):
        label = f"{int(lo)}+" if hi == np.inf else f"{int(lo)}-{int(hi) - 1}"
        bins.append((label, (sizes >= lo) & (sizes < hi)))
    return bins


def breakdown(errors: np.ndarray, sizes: np.ndarray, edges: tuple[int, ...]) -> dict[str, dict]:
    """Mean / median error and count per size bin (bins with no events are left out)."""
    out = {}
    for label, mask in size_bins(sizes, edges):
        if mask.any():
            out[label] = {
                "mean": float(errors[mask].mean()),
                "median": float(np.median(errors[mask])),
                "count": int(mask.sum()),
            }
    return out
