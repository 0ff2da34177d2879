"""Readers of the Gravity Spy training set (HDF5 and PNG tree) as random-access grain sources.

HDF5 (`trainingsetv1d1.h5`, about 3.1 GB): `h5[label][sample_type][gravityspy_id]['<dur>.png']`,
each dataset one grayscale spectrogram, (1, H, W) or (H, W) (*unverified* which; both are read,
`[0]` of a leading axis of 1). The file is opened lazily, once per process, on the first
`__getitem__` (never in `__init__`, never loaded whole): grain's workers, forked or threaded, each
read only the samples they are asked for. The index of (label, split, id) is built once from the
file's keys.

PNG tree (the tarball): `<root>/<label>/<sample_type>/<ifo>_<id>_spectrogram_<dur>.png`, RGB plots
that still carry axes; `crop` (a PIL box: left, top, right, bottom, in pixels) cuts the plot area
out before the image is converted to grayscale.

Both give records {"image": [V, S, S, 3] (multi-view) or [S, S, 3] float32, normalised,
"label": int32, "index": int32 (row of `source.ids`)}; grayscale is replicated to 3 channels so
ImageNet-pretrained (timm) weights apply unchanged.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import h5py
import ml_collections
import numpy as np
from absl import logging
from PIL import Image

from jaxlab.data import ownership
from jaxlab.glitch import synthetic
from jaxlab.glitch.data_index import (  # noqa: F401  (read_metadata: part of this reader's API)
    PNG_PATTERN,
    check_metadata,
    check_view_layout,
    index_h5,
    index_png_tree,
    label_set,
    read_metadata,
)
from jaxlab.glitch.format import DURATIONS, rgb_to_gray


def to_unit_range(array: np.ndarray, where: str) -> np.ndarray:
    """A spectrogram as float32 in [0, 1]; uint8 and 0..255 floats are scaled. Raises on NaN."""
    if array.dtype == np.uint8:
        return array.astype(np.float32) / 255.0
    if not np.issubdtype(array.dtype, np.floating) and not np.issubdtype(array.dtype, np.integer):
        raise ValueError(
            f"{where}: dtype {array.dtype} is not numeric; expected a grayscale image."
        )
    image = array.astype(np.float32)
    if not np.isfinite(image).all():
        raise ValueError(f"{where}: holds NaN or Inf values; expected a grayscale image in [0, 1].")
    lo, hi = float(image.min()), float(image.max())
    if lo < -1e-3 or hi > 255.0 + 1e-3:
        raise ValueError(
            f"{where}: values in [{lo:.4g}, {hi:.4g}]; expected [0, 1] (or 0..255 levels)."
        )
    if hi > 1.0 + 1e-3:
        image = image / 255.0
    return np.clip(image, 0.0, 1.0)


def decode_view(array: np.ndarray, where: str) -> np.ndarray:
    """A stored view -> [H, W] float32 in [0, 1]. Accepts (1, H, W) (`[0]` is read) or (H, W)."""
    if array.ndim == 3 and array.shape[0] == 1:
        array = array[0]
    if array.ndim != 2 or min(array.shape) < 2:
        raise ValueError(f"{where}: shape {array.shape}; expected a (1, H, W) or (H, W) image.")
    return to_unit_range(array, where)


def resize(image: np.ndarray, size: int) -> np.ndarray:
    """[H, W] float32 -> [size, size] float32, bilinear (PIL, antialiased when shrinking)."""
    if image.shape == (size, size):
        return image
    resized = Image.fromarray(image, mode="F").resize((size, size), Image.Resampling.BILINEAR)
    return np.asarray(resized, np.float32)


def to_record_image(views: list[np.ndarray], multi_view: bool, mean: float, std: float):
    """[H, W] views (already resized) -> [V, S, S, 3] or [S, S, 3], normalised."""
    stacked = (np.stack(views) - mean) / std  # [V, S, S]
    # One write of the 3-channel copy (np.repeat on a trailing axis of 1 was 7x slower).
    image = np.empty((*stacked.shape, 3), np.float32)
    image[...] = stacked[..., None]
    return image if multi_view else image[0]


def make_record(source, i: int) -> dict[str, np.ndarray]:
    """Record i of a reader: its views read, resized (or taken from the reader's cache)."""
    views = source._cache.get(i) if source._cache is not None else None
    if views is None:
        views = np.stack([resize(v, source.image_size) for v in source.read_views(i)])
        if source._cache is not None:
            source._cache[i] = views
    return {
        "image": to_record_image(list(views), source.multi_view, source.mean, source.std),
        "label": np.int32(source.labels[i]),
        "index": np.int32(i),
    }


def png_to_gray(png: Image.Image, path: str) -> np.ndarray:
    """A Gravity Spy PNG (RGB plot, or already gray) -> [H, W] float32 gray in [0, 1], with the
    conversion Gravity Spy's h5 was made with (skimage rgb2gray weights)."""
    if png.mode in ("L", "I;16", "I", "F"):
        return to_unit_range(np.asarray(png), path)
    if png.mode not in ("RGB", "RGBA", "P", "LA"):
        raise ValueError(f"{path}: PNG mode {png.mode!r}; expected an RGB or grayscale image.")
    return rgb_to_gray(np.asarray(png.convert("RGB")))


class GravitySpyH5:
    """Random-access records of one split of `trainingsetv1d1.h5`; opened lazily per process.

    Args:
      classes: the label set (config.data.classes); a label group not in it is an error. None:
        the file's groups, sorted.

    Raises ValueError (naming the file and the group) for an unknown label, a gravityspy id in
    two splits (a leak) or under two labels, a view with wrong dims or a non-numeric dtype, or
    an unreadable (truncated) file.

    Attributes:
      classes: label names in class-index order.
      ids: [N] gravityspy ids (str); labels: [N] int32 class indices (record i is sample
        ids[i] of class labels[i]).
    """

    def __init__(
        self,
        path: str,
        split: str,
        *,
        image_size: int,
        classes: Sequence[str] | None = None,
        multi_view: bool = True,
        view: str = "1.0",
        durations: Sequence[str] = DURATIONS,
        mean: float = 0.5,
        std: float = 0.5,
        cache: bool = False,
    ):
        if not os.path.exists(path):
            raise FileNotFoundError(
                f"{path}: no such file; download trainingsetv1d1.h5 (Zenodo, Gravity Spy "
                "training set v1d1) or set config.data.synthetic=True."
            )
        self.path, self.split = path, split
        self.image_size, self.multi_view, self.mean, self.std = image_size, multi_view, mean, std
        self.durations = tuple(durations) if multi_view else (view,)
        # Resized views by record, kept when `cache` (a small dataset read every epoch).
        self._cache: dict[int, np.ndarray] | None = {} if cache else None
        self._file: h5py.File | None = None
        self._pid: int | None = None
        try:
            f = h5py.File(path, "r")
        except OSError as e:
            raise ValueError(f"{path}: not a readable HDF5 file ({e}).") from e
        with f:
            try:
                self.classes = label_set(sorted(f.keys()), classes, path, "label group")
                by_split = index_h5(f, path, self.classes)
                samples = by_split.get(split, [])
                if not samples:
                    raise ValueError(
                        f"{path}: no samples of split {split!r} (h5[label][{split!r}] missing "
                        f"for every label); splits in the file: {sorted(by_split)}."
                    )
                self.ids = np.asarray([gid for gid, _ in samples])
                self.labels = np.asarray([label for _, label in samples], np.int32)
                for i in range(len(self.ids)):
                    self._check_views(f, i)
            except (OSError, RuntimeError, KeyError) as e:  # h5py's errors name no file
                raise ValueError(
                    f"{path}: unreadable HDF5 structure, the file may be truncated or corrupt "
                    f"({type(e).__name__}: {e})."
                ) from e
        missing = [c for c in range(len(self.classes)) if not np.any(self.labels == c)]
        if missing:
            logging.warning(
                "%s: split %r has no samples of %s.",
                path,
                split,
                [self.classes[c] for c in missing],
            )

    def _sample_path(self, i: int) -> str:
        return f"/{self.classes[self.labels[i]]}/{self.split}/{self.ids[i]}"

    def _check_views(self, f: h5py.File, i: int) -> None:
        """Each view of record i exists with an image's dims and a numeric dtype (metadata only;
        values are checked when read)."""
        sample = f[self._sample_path(i)]
        for dur in self.durations:
            if f"{dur}.png" not in sample:
                raise ValueError(
                    f"{self.path}: {self._sample_path(i)} has no dataset '{dur}.png'; "
                    f"found {sorted(sample.keys())}, expected one per duration {self.durations}."
                )
            check_view_layout(
                sample[f"{dur}.png"], f"{self.path}: {self._sample_path(i)}/{dur}.png"
            )

    def __getstate__(self):  # an open h5py handle must not travel to another process
        cache = None if self._cache is None else {}
        return {**self.__dict__, "_file": None, "_pid": None, "_cache": cache}

    def _open(self) -> h5py.File:
        if self._file is None or self._pid != os.getpid():
            self._file, self._pid = h5py.File(self.path, "r"), os.getpid()
        return self._file

    def __len__(self) -> int:
        return len(self.ids)

    def read_views(self, i: int) -> list[np.ndarray]:
        """The raw views of record i, decoded to [H, W] float32 in [0, 1] (not resized)."""
        f = self._open()
        sample = f[self._sample_path(i)]
        views = []
        for dur in self.durations:
            name = f"{dur}.png"
            where = f"{self.path}: {self._sample_path(i)}/{name}"
            if name not in sample:
                raise ValueError(
                    f"{where} is missing; found {sorted(sample.keys())}, expected one dataset per "
                    f"duration {self.durations}."
                )
            try:
                array = np.asarray(sample[name])
            except OSError as e:  # h5py's error for bytes it cannot decode names no dataset
                raise ValueError(
                    f"{where}: unreadable dataset, the file may be corrupt ({e})."
                ) from e
            views.append(decode_view(array, where))
        return views

    def __getitem__(self, i: int) -> dict[str, np.ndarray]:
        return make_record(self, int(i))


class GravitySpyPngTree:
    """Random-access records of one split of the tarball's PNG tree (same record layout).

    Raises ValueError for a label folder not in `classes`, an id in two splits (a leak) or two
    labels, or missing durations.

    Args:
      root: directory holding `<label>/<sample_type>/<ifo>_<id>_spectrogram_<dur>.png`.
      classes: the label set (config.data.classes); None: the folders, sorted.
      crop: PIL box (left, top, right, bottom) of the plot area inside each PNG, or None.
    """

    def __init__(
        self,
        root: str,
        split: str,
        *,
        image_size: int,
        classes: Sequence[str] | None = None,
        multi_view: bool = True,
        view: str = "1.0",
        durations: Sequence[str] = DURATIONS,
        crop: Sequence[int] | None = None,
        mean: float = 0.5,
        std: float = 0.5,
        cache: bool = False,
    ):
        if not os.path.isdir(root):
            raise FileNotFoundError(f"{root}: no such directory (the unpacked PNG tarball).")
        self.root, self.split = root, split
        self.image_size, self.multi_view, self.mean, self.std = image_size, multi_view, mean, std
        self.durations = tuple(durations) if multi_view else (view,)
        self.crop = tuple(int(c) for c in crop) if crop else None
        self._cache: dict[int, np.ndarray] | None = {} if cache else None
        folders = sorted(d for d in os.listdir(root) if os.path.isdir(os.path.join(root, d)))
        self.classes = label_set(folders, classes, root, "label folder")
        files = index_png_tree(root, split, self.classes)
        if not files:
            raise ValueError(
                f"{root}: no '<label>/{split}/<ifo>_<id>_spectrogram_<dur>.png' files for split "
                f"{split!r}."
            )
        self._files = []
        for key in sorted(files):
            missing = [d for d in self.durations if d not in files[key]]
            if missing:
                raise ValueError(
                    f"{root}: {self.classes[key[0]]}/{split}/{key[1]}_spectrogram_<dur>.png "
                    f"missing for durations {missing}; expected {self.durations}."
                )
            self._files.append([files[key][d] for d in self.durations])
        self.labels = np.asarray([k[0] for k in sorted(files)], np.int32)
        self.ids = np.asarray([k[1].split("_", 1)[1] for k in sorted(files)])

    def __len__(self) -> int:
        return len(self._files)

    def read_views(self, i: int) -> list[np.ndarray]:
        views = []
        for path in self._files[i]:
            with Image.open(path) as png:
                if self.crop:
                    if self.crop[2] > png.width or self.crop[3] > png.height:
                        raise ValueError(
                            f"{path}: crop box {self.crop} lies outside the {png.width} x "
                            f"{png.height} image; set config.data.png_crop to the plot area."
                        )
                    png = png.crop(self.crop)
                views.append(png_to_gray(png, path))
        return views

    def __getitem__(self, i: int) -> dict[str, np.ndarray]:
        return make_record(self, int(i))


def shift_augment(max_shift: int):
    """A random time shift (columns) of up to `max_shift` pixels, edges repeated: a grain
    `random_transform` `(record, rng) -> record`."""

    def augment(record: dict[str, np.ndarray], rng: np.random.Generator) -> dict[str, np.ndarray]:
        shift = int(rng.integers(-max_shift, max_shift + 1))
        if shift == 0:
            return record
        image = record["image"]
        axis = image.ndim - 2  # width axis of [..., S, S, 3]
        index = np.clip(np.arange(image.shape[axis]) - shift, 0, image.shape[axis] - 1)
        return {**record, "image": np.take(image, index, axis=axis)}

    return augment


def class_weights(labels: np.ndarray, num_classes: int) -> np.ndarray:
    """[C] weights n / (C_present * n_c) from training frequencies (sklearn's "balanced"); 0 for
    classes absent from training."""
    counts = np.bincount(labels, minlength=num_classes).astype(np.float64)
    present = counts > 0
    weights = np.zeros(num_classes)
    weights[present] = counts.sum() / (present.sum() * counts[present])
    return weights.astype(np.float32)


def prepare(config: ml_collections.ConfigDict, workdir: str) -> str:
    """The data directory, after writing the synthetic dataset there when configured.

    Synthetic data goes only into a folder that is missing, empty or already carries jaxlab's
    synthetic marker (`jaxlab.data.ownership`); a user's folder raises `DataDirError` unchanged.
    """
    dc = config.data
    data_dir = dc.dir or os.path.join(workdir, "data")
    if dc.synthetic:
        # Refuses (one error, nothing written) a folder holding files jaxlab did not write.
        data_dir = ownership.claim_synthetic_dir(data_dir)
        synthetic.write_dataset(
            data_dir,
            samples_per_class=dc.synthetic_samples_per_class,
            imbalance_power=dc.synthetic_imbalance_power,
            min_per_class=dc.synthetic_min_per_class,
            image_shape=tuple(dc.synthetic_image_shape),
            png_per_split=dc.synthetic_png_per_split,
            label_noise=dc.get("synthetic_label_noise", 0.0),
            classes=tuple(dc.classes),
            seed=config.seed,
        )
    return data_dir


def load(config: ml_collections.ConfigDict, data_dir: str, split: str):
    """The configured reader (`config.data.format` "h5" or "png") for one split."""
    dc = config.data
    common = {
        "image_size": dc.image_size,
        "classes": tuple(dc.classes),
        "multi_view": dc.multi_view,
        "view": dc.view,
        "durations": tuple(dc.durations),
        "mean": dc.mean,
        "std": dc.std,
        "cache": dc.cache,
    }
    if dc.format == "h5":
        source = GravitySpyH5(os.path.join(data_dir, dc.h5_name), split, **common)
    elif dc.format == "png":
        crop = tuple(dc.png_crop) if dc.png_crop else None
        source = GravitySpyPngTree(os.path.join(data_dir, dc.png_dir), split, crop=crop, **common)
    else:
        raise ValueError(f"config.data.format = {dc.format!r}; expected 'h5' or 'png'.")
    metadata_path = os.path.join(data_dir, dc.metadata_name)
    if dc.metadata_name and os.path.exists(metadata_path):
        metadata = read_metadata(metadata_path, tuple(dc.classes))
        check_metadata(source, metadata, metadata_path)
    return source
