"""Writes a small Gravity Spy training set in the published layout, with planted morphologies.

Files (the names of the Zenodo "Gravity Spy training set" v1d1 record):

    trainingsetv1d1.h5              h5[label][sample_type][gravityspy_id]['<dur>.png'],
                                    each a float32 (1, H, W) grayscale spectrogram in [0, 1]
    trainingset_v1d1_metadata.csv   one row per glitch: event_time, ifo, ..., gravityspy_id, label,
                                    sample_type, url1..url4
    png/<label>/<sample_type>/<ifo>_<gravityspy_id>_spectrogram_<dur>.png   (optional, a few)
                                    RGB viridis plots with an axes frame, like the tarball

The h5 arrays are what Gravity Spy's own reader makes of the PNGs (skimage `rgb2gray` of the
plot area: 0.2125 R + 0.7154 G + 0.0721 B of the 8-bit RGB, in [0, 1]): each view is rendered as
an intensity, coloured with viridis to 8-bit RGB (the PNG's plot area) and that RGB converted
to gray (the h5 dataset), so the two readers give the same arrays.

Each glitch is one physical event drawn once and rendered in the four time windows
(0.5, 1.0, 2.0 and 4.0 s, centred on the glitch) on a log-frequency axis, so the classes differ
across time scales as real ones do: a Blip is a thin vertical line at 0.5 s and a dot at 4 s, the
arches of Scattered_Light only show in the long windows, Repeating_Blips repeat every ~0.8 s.
Three pairs of classes (`TIME_SCALE_PAIRS`) are planted to look the same in the 0.5 s and 1.0 s
windows and to differ only in the 2.0 s and 4.0 s ones, so a model that sees the 1.0 s view
alone cannot separate them (the multi-view study, jaxlab/glitch/study.py, measures this).
Rows are frequency (row 0 = highest), columns are time, as in the published images.

Gravity Spy's labels are volunteer votes and carry some noise; `label_noise` plants it: that
fraction of the glitches of a class are drawn with another class's morphology (uniformly chosen)
but keep the label. It caps every model's accuracy near 1 - label_noise, so a demo score shows
headroom rather than a ceiling.

Class sizes follow the shape of the real imbalance (Blip and Koi_Fish many; Paired_Doves,
Wandering_Line and Chirp few), compressed by `imbalance_power` so a demo has every class in every
split.
"""

from __future__ import annotations

import csv
import os
import string

import h5py
import numpy as np
from PIL import Image

from jaxlab.data import ownership
from jaxlab.glitch.format import (
    DURATIONS,
    H5_NAME,
    IMAGE_SHAPE,
    METADATA_COLUMNS,
    METADATA_NAME,
    SPLITS,
    png_name,
    rgb_to_gray,
)

# Approximate per-class counts of the v1d1 training set (the shape of the imbalance only).
REAL_COUNTS = {
    "1080Lines": 328,
    "1400Ripples": 81,
    "Air_Compressor": 58,
    "Blip": 1821,
    "Chirp": 60,
    "Extremely_Loud": 447,
    "Helix": 279,
    "Koi_Fish": 706,
    "Light_Modulation": 512,
    "Low_Frequency_Burst": 621,
    "Low_Frequency_Lines": 447,
    "No_Glitch": 150,
    "None_of_the_Above": 81,
    "Paired_Doves": 27,
    "Power_Line": 449,
    "Repeating_Blips": 263,
    "Scattered_Light": 443,
    "Scratchy": 337,
    "Tomte": 103,
    "Violin_Mode": 412,
    "Wandering_Line": 42,
    "Whistle": 299,
}
CLASSES = tuple(sorted(REAL_COUNTS))

BACKGROUND = 0.12
NOISE_STD = 0.05


def _gauss(x: np.ndarray, mu: float, sigma: float) -> np.ndarray:
    return np.exp(-0.5 * np.square((x - mu) / sigma))


def _band(y: np.ndarray, lo: float, hi: float, edge: float = 0.03) -> np.ndarray:
    """Smooth indicator of lo <= y <= hi."""
    return 1.0 / (1.0 + np.exp(-(y - lo) / edge)) / (1.0 + np.exp((y - hi) / edge))


def _window(t: np.ndarray, lo: float, hi: float, edge: float = 0.01) -> np.ndarray:
    return _band(t, lo, hi, edge)


def _track(y: np.ndarray, y_of_t: np.ndarray, width: float) -> np.ndarray:
    """A line following y_of_t (broadcast over time) with a Gaussian cross-section."""
    return _gauss(y - y_of_t, 0.0, width)


# Class pairs planted to look the same in the 1.0 s window (and the 0.5 s one) and differ only
# in the 2.0 s and 4.0 s windows, where the second class's structure beyond +-0.6 s shows: a
# single view of 1.0 s cannot tell them apart, the four views together can.
TIME_SCALE_PAIRS = (
    ("Blip", "Repeating_Blips"),
    ("Low_Frequency_Burst", "Scattered_Light"),
    ("Violin_Mode", "Wandering_Line"),
)
TIME_SCALE_CLASSES = tuple(name for pair in TIME_SCALE_PAIRS for name in pair)


def _arch_period(p: dict) -> float:
    return 1.5 + 0.4 * p["u"]


def _arches(t: np.ndarray, y: np.ndarray, p: dict) -> np.ndarray:
    """Scattered-light arches at low frequency, apex (y = 0.26) at t = 0, feet every period."""
    return 1.2 * _track(y, 0.04 + 0.22 * np.abs(np.cos(np.pi * t / _arch_period(p))), 0.02)


def render(label: str, params: dict, t: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Glitch intensity >= 0 of one class on a grid.

    Args:
      label: class name.
      params: this glitch's random draws (shared by its four views), see `draw_params`.
      t: [1, W] seconds from the glitch centre.
      y: [H, 1] log-frequency position, 0 = lowest (10 Hz), 1 = highest (~2 kHz).

    Returns:
      [H, W] intensity.
    """
    p = params
    t = t - p["shift"]
    if label == "1080Lines":
        gate = (np.sin(2 * np.pi * t / 0.3 + p["phase"]) > -0.3).astype(np.float64)
        return _track(y, p["y0"] + 0.83, 0.012) * gate
    if label == "1400Ripples":
        out = 0.0
        for k in range(3):
            out = out + _gauss(t, (k - 1) * 0.07, 0.02)
        return _track(y, p["y0"] + 0.9, 0.025) * out
    if label == "Air_Compressor":
        return 0.8 * _track(y, p["y0"] + 0.24, 0.02) * np.ones_like(t)
    if label == "Blip":
        return _gauss(t, 0.0, 0.015) * _band(y, 0.22, 0.62)
    if label == "Chirp":
        length = 0.25 + 0.1 * p["u"]
        frac = np.clip((t + length) / length, 0.0, 1.0)
        return _track(y, 0.15 + 0.6 * frac**3, 0.02) * _window(t, -length, 0.0)
    if label == "Extremely_Loud":
        return 1.6 * _gauss(t, 0.0, 0.12) * _band(y, 0.0, 1.0)
    if label == "Helix":
        out = 0.0
        for y_k in (0.32, 0.47, 0.62):
            out = out + _track(y, y_k + 0.04 * np.sin(2 * np.pi * t / 0.12 + p["phase"]), 0.012)
        return out * _window(t, -0.6, 0.6)
    if label == "Koi_Fish":
        return 1.3 * _gauss(t, 0.0, 0.035) * _band(y, 0.05, 0.85) * (1.0 + _gauss(y, 0.3, 0.1))
    if label == "Light_Modulation":
        out = 0.0
        for k in range(-10, 11):
            out = out + _gauss(t, k * 0.5 + 0.25 * p["u"], 0.05)
        return out * _band(y, 0.0, 0.42)
    if label == "Low_Frequency_Burst":  # one arch of Scattered_Light: the same within +-0.5 s
        return _arches(t, y, p) * _window(t, -_arch_period(p) / 2, _arch_period(p) / 2, 0.02)
    if label == "Low_Frequency_Lines":
        return (_track(y, 0.07, 0.01) + _track(y, 0.16, 0.01)) * np.ones_like(t)
    if label == "No_Glitch":
        return np.zeros(np.broadcast_shapes(y.shape, t.shape))
    if label == "None_of_the_Above":  # a falling line: no other class falls
        return _track(y, 0.85 - 1.2 * (t + 0.2), 0.02) * _window(t, -0.2, 0.3)
    if label == "Paired_Doves":  # a rising arc followed by its mirror image
        rise = 0.3 + 0.4 * np.clip((t + 0.2) / 0.2, 0.0, 1.0) ** 2
        fall = 0.3 + 0.4 * np.clip((0.2 - t) / 0.2, 0.0, 1.0) ** 2
        return _track(y, np.where(t < 0, rise, fall), 0.02) * _window(t, -0.2, 0.2)
    if label == "Power_Line":
        pulses = 0.4 + 0.6 * (np.sin(2 * np.pi * t / 0.1 + p["phase"]) > 0)
        return _track(y, p["y0"] + 0.36, 0.015) * pulses
    if label == "Repeating_Blips":  # a Blip repeating every 0.7-0.9 s: a Blip within +-0.5 s
        out = 0.0
        for k in range(-6, 7):
            out = out + _gauss(t, k * (0.7 + 0.2 * p["u"]), 0.015)
        return out * _band(y, 0.22, 0.62)
    if label == "Scattered_Light":  # arches every 1.5-1.9 s, one apex at the centre
        return _arches(t, y, p)
    if label == "Scratchy":
        out = 0.0
        for t_k in p["times"]:
            out = out + _gauss(t, t_k, 0.006)
        return out * _band(y, 0.3, 0.6) * _window(t, -0.8, 0.8)
    if label == "Tomte":
        return 1.4 * _gauss(t, 0.0, 0.025) * _band(y, 0.02, 0.28) * (1.0 - y)
    if label == "Violin_Mode":
        return _track(y, p["y0"] + 0.56, 0.01) * np.ones_like(t)
    if label == "Wandering_Line":  # a Violin_Mode line that wanders off beyond +-0.6 s
        drift = np.clip((np.abs(t) - 0.6) / 0.8, 0.0, 1.0) * (0.12 if p["u"] < 0.5 else -0.12)
        return _track(y, p["y0"] + 0.56 + drift, 0.01)
    if label == "Whistle":  # a V at high frequency
        return _track(y, 0.55 + 2.0 * np.abs(t), 0.015) * _window(t, -0.2, 0.2)
    raise ValueError(f"synthetic.render: unknown class {label!r}; expected one of {CLASSES}.")


def draw_params(rng: np.random.Generator) -> dict:
    """The random draws of one glitch, shared by its four time windows."""
    return {
        "shift": rng.uniform(-0.01, 0.01),
        "phase": rng.uniform(0, 2 * np.pi),
        "u": rng.uniform(),
        "y0": rng.uniform(-0.015, 0.015),
        "times": rng.uniform(-0.8, 0.8, size=30),
        "amplitude": rng.uniform(0.55, 0.9),
    }


def spectrograms(
    label: str, rng: np.random.Generator, shape: tuple[int, int] = IMAGE_SHAPE
) -> dict[str, np.ndarray]:
    """One glitch: duration ('0.5', ...) -> float32 [H, W] image in [0, 1] (8-bit levels)."""
    height, width = shape
    params = draw_params(rng)
    y = (1.0 - (np.arange(height) + 0.5) / height)[:, None]  # row 0 = highest frequency
    images = {}
    for dur in DURATIONS:
        seconds = float(dur)
        t = ((np.arange(width) + 0.5) / width * seconds - seconds / 2)[None, :]
        glitch = params["amplitude"] * render(label, params, t, y)
        noise = NOISE_STD * rng.standard_normal((height, width))
        image = np.clip(BACKGROUND + 0.05 * (1 - y) + glitch + noise, 0.0, 1.0)
        images[dur] = (np.round(image * 255) / 255).astype(np.float32)
    return images


def to_rgb(intensity: np.ndarray) -> np.ndarray:
    """[H, W] intensity in [0, 1] -> [H, W, 3] uint8 viridis colours (the PNG's plot area)."""
    from matplotlib import colormaps

    return np.round(colormaps["viridis"](intensity)[..., :3] * 255).astype(np.uint8)


def class_sizes(
    samples_per_class: int, imbalance_power: float, min_per_class: int
) -> dict[str, int]:
    """Samples per class: median class gets `samples_per_class`, others follow the real shape."""
    median = float(np.median(list(REAL_COUNTS.values())))
    return {
        label: max(min_per_class, round(samples_per_class * (count / median) ** imbalance_power))
        for label, count in REAL_COUNTS.items()
    }


def split_counts(n: int, fractions: tuple[float, float, float] = (0.7, 0.15, 0.15)) -> list[int]:
    """train / validation / test sizes of a class of n; at least 2 in validation and test."""
    n_val = max(2, round(n * fractions[1]))
    n_test = max(2, round(n * fractions[2]))
    return [n - n_val - n_test, n_val, n_test]


def _gravityspy_id(rng: np.random.Generator) -> str:
    alphabet = np.array(list(string.ascii_letters + string.digits))
    return "".join(rng.choice(alphabet, size=10))


def _metadata_row(label: str, split: str, gid: str, rng: np.random.Generator) -> dict:
    gps = 1126400000 + rng.uniform(0, 5e7)
    duration = rng.uniform(0.05, 2.0)
    freq = rng.uniform(20, 1000)
    urls = {
        f"url{k}": f"https://example.invalid/{gid}_spectrogram_{d}.png"
        for k, d in enumerate(DURATIONS, start=1)
    }
    return {
        "event_time": f"{gps:.3f}",
        "ifo": rng.choice(["H1", "L1"]),
        "peak_time": int(gps),
        "peak_time_ns": int((gps % 1) * 1e9),
        "start_time": int(gps - duration / 2),
        "start_time_ns": 0,
        "duration": f"{duration:.4f}",
        "event_id": _gravityspy_id(rng),
        "peak_frequency": f"{freq:.2f}",
        "central_freq": f"{freq:.2f}",
        "bandwidth": f"{rng.uniform(5, 2000):.2f}",
        "amplitude": f"{rng.uniform(1e-23, 1e-21):.3e}",
        "snr": f"{rng.uniform(7.5, 200):.2f}",
        "gravityspy_id": gid,
        "label": label,
        "sample_type": split,
        **urls,
    }


def write_dataset(
    directory: str,
    *,
    samples_per_class: int = 45,
    imbalance_power: float = 0.35,
    min_per_class: int = 24,
    image_shape: tuple[int, int] = IMAGE_SHAPE,
    png_per_split: int = 0,
    label_noise: float = 0.0,
    classes: tuple[str, ...] = CLASSES,
    seed: int = 0,
) -> str:
    """Writes the h5 + metadata CSV (and optionally a PNG tree) into `directory`; idempotent.

    Args:
      samples_per_class: size of the median class.
      imbalance_power: 0 = balanced, 1 = the real imbalance.
      min_per_class: floor on every class's size (every class in every split).
      image_shape: (H, W) of the stored arrays; the published ones are 140 x 170.
      png_per_split: also write this many glitches per class and split as a PNG tree under
        `directory/png` (0 = none).
      label_noise: fraction of glitches drawn with another class's morphology under this label
        (0 = clean labels).
      classes: the classes written (all 22 by default; a subset makes a smaller task).

    The caller claims `directory` first (`ownership.claim_synthetic_dir`); every file written
    here is checked with `ownership.check_not_overwriting`, so a file jaxlab did not write is never
    replaced.

    Returns:
      The path of the h5 file.
    """
    os.makedirs(directory, exist_ok=True)
    path = os.path.join(directory, H5_NAME)
    if os.path.exists(path):
        return path
    csv_path = ownership.check_not_overwriting(os.path.join(directory, METADATA_NAME))
    ownership.check_not_overwriting(path)
    unknown = sorted(set(classes) - set(CLASSES))
    if unknown:
        raise ValueError(f"synthetic.write_dataset: unknown classes {unknown}; use {CLASSES}.")
    rng = np.random.default_rng(seed)
    sizes = class_sizes(samples_per_class, imbalance_power, min_per_class)
    rows = []
    # Written under a temporary name then renamed: processes of a multi-host job may race.
    tmp = f"{path}.{os.getpid()}.tmp"
    with h5py.File(tmp, "w") as f:
        for label in classes:
            for split, count in zip(SPLITS, split_counts(sizes[label]), strict=True):
                group = f.create_group(f"{label}/{split}")
                for i in range(count):
                    gid = _gravityspy_id(rng)
                    drawn = label
                    if label_noise > 0 and rng.random() < label_noise:
                        drawn = str(rng.choice([c for c in classes if c != label]))
                    colours = {
                        dur: to_rgb(image)
                        for dur, image in spectrograms(drawn, rng, image_shape).items()
                    }
                    sample = group.create_group(gid)
                    for dur, rgb in colours.items():
                        sample.create_dataset(
                            f"{dur}.png",
                            data=rgb_to_gray(rgb)[None],
                            compression="gzip",
                            shuffle=True,
                        )
                    row = _metadata_row(label, split, gid, rng)
                    rows.append(row)
                    if i < png_per_split:
                        write_png_sample(
                            os.path.join(directory, "png"), label, split, row["ifo"], gid, colours
                        )
    csv_tmp = os.path.join(directory, f"{METADATA_NAME}.{os.getpid()}.tmp")
    with open(csv_tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=METADATA_COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    os.replace(csv_tmp, csv_path)
    os.replace(tmp, path)
    return path


# Plot margins of the synthetic PNGs, in pixels: (left, top, right, bottom) around the axes.
PNG_MARGINS = (60, 30, 20, 45)


def write_png_sample(
    root: str, label: str, split: str, ifo: str, gid: str, colours: dict[str, np.ndarray]
) -> None:
    """Writes the four views (`colours`: duration -> [H, W, 3] uint8, see `to_rgb`) as RGB PNGs
    with white margins and a black axes frame.

    The plot area (the spectrogram) is at PIL box (left, top, left + W, top + H) with
    (left, top) = PNG_MARGINS[:2] (`png_plot_box`); the frame is drawn one pixel outside it.
    """
    left, top, right, bottom = PNG_MARGINS
    directory = os.path.join(root, label, split)
    os.makedirs(directory, exist_ok=True)
    for dur, rgb in colours.items():
        height, width = rgb.shape[:2]
        canvas = np.full((top + height + bottom, left + width + right, 3), 255, np.uint8)
        canvas[top - 1 : top + height + 1, left - 1 : left + width + 1] = 0  # the frame
        canvas[top : top + height, left : left + width] = rgb
        for k in range(5):  # tick marks on the time axis
            x = left + k * (width - 1) // 4
            canvas[top + height + 1 : top + height + 6, x] = 0
        path = ownership.check_not_overwriting(os.path.join(directory, png_name(ifo, gid, dur)))
        Image.fromarray(canvas).save(path)


def png_plot_box(image_shape: tuple[int, int]) -> tuple[int, int, int, int]:
    """PIL box (left, top, right, bottom) of the plot area of a synthetic PNG of [H, W] views."""
    left, top = PNG_MARGINS[:2]
    return (left, top, left + image_shape[1], top + image_shape[0])
