"""File-format facts of the Gravity Spy training set (Zenodo record "Gravity Spy training set"
v1d1), shared by the readers (`data.py`, `data_index.py`) and the demo-data writer (`synthetic.py`).

    trainingsetv1d1.h5              h5[label][sample_type][gravityspy_id]['<dur>.png']
    trainingset_v1d1_metadata.csv   one row per glitch, columns METADATA_COLUMNS
    <label>/<sample_type>/<ifo>_<gravityspy_id>_spectrogram_<dur>.png   (the PNG tarball)

The h5 arrays are the PNG plot areas in gray (`rgb_to_gray`).
"""

from __future__ import annotations

import re

import numpy as np

H5_NAME = "trainingsetv1d1.h5"
METADATA_NAME = "trainingset_v1d1_metadata.csv"
DURATIONS = ("0.5", "1.0", "2.0", "4.0")
SPLITS = ("train", "validation", "test")
IMAGE_SHAPE = (140, 170)  # (frequency rows, time columns) of the published arrays

METADATA_COLUMNS = (
    "event_time",
    "ifo",
    "peak_time",
    "peak_time_ns",
    "start_time",
    "start_time_ns",
    "duration",
    "event_id",
    "peak_frequency",
    "central_freq",
    "bandwidth",
    "amplitude",
    "snr",
    "gravityspy_id",
    "label",
    "sample_type",
    "url1",
    "url2",
    "url3",
    "url4",
)

# Gray = RGB @ these (skimage.color.rgb2gray, which Gravity Spy's image reader uses).
GRAY_WEIGHTS = (0.2125, 0.7154, 0.0721)


def rgb_to_gray(rgb: np.ndarray) -> np.ndarray:
    """[H, W, 3] uint8 -> [H, W] float32 gray in [0, 1] (skimage's rgb2gray weights).

    The one conversion the PNG reader uses and the synthetic writer makes its h5 arrays with.
    """
    weights = np.asarray(GRAY_WEIGHTS, np.float32)
    return (rgb[..., :3].astype(np.float32) / np.float32(255.0)) @ weights


def png_name(ifo: str, gid: str, dur: str) -> str:
    """The tarball's name of one view: `<ifo>_<gravityspy_id>_spectrogram_<dur>.png`."""
    return f"{ifo}_{gid}_spectrogram_{dur}.png"


PNG_PATTERN = re.compile(r"^(?P<ifo>[A-Za-z0-9]+)_(?P<id>.+)_spectrogram_(?P<dur>[0-9.]+)\.png$")
