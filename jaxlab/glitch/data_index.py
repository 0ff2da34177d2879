"""The indexes of Gravity Spy files and their checks: label sets, splits and leaks, view
layouts, the metadata CSV. Each problem is one ValueError naming the file and the field.

Used by `data.py` (the readers) and `predict.py`; reads file structure and CSV text only, never
an image.
"""

from __future__ import annotations

import collections
import csv
import os
from collections.abc import Sequence

import h5py
from absl import logging

from jaxlab.glitch.format import PNG_PATTERN, SPLITS


def label_set(
    found: Sequence[str], classes: Sequence[str] | None, where: str, field: str
) -> list[str]:
    """The label set in class-index order: `classes` (every label found must be in it), or the
    labels found, sorted, when `classes` is None. An unknown label is an error, never a new
    class (the model's output width is fixed by config.data.classes)."""
    if classes is None:
        return sorted(found)
    unknown = [label for label in found if label not in classes]
    if unknown:
        raise ValueError(
            f"{where}: {field} {unknown[0]!r} is not one of the {len(classes)} classes of "
            f"config.data.classes ({len(unknown)} unknown: {unknown[:5]}); expected labels from "
            f"{list(classes)}."
        )
    return list(classes)


def check_splits_disjoint(where: dict[str, list[tuple[str, str]]], source: str) -> None:
    """`where`: gravityspy id -> [(label, split), ...]. An id under two splits is a train/test
    leak, under two labels of one split a duplicate: one error naming the id and both places."""
    for gid, places in where.items():
        if len(places) < 2:
            continue
        (label_a, split_a), (label_b, split_b) = places[:2]
        count = sum(len(p) > 1 for p in where.values())
        if split_a != split_b:
            raise ValueError(
                f"{source}: gravityspy_id {gid!r} is in split {split_a!r} ({label_a}) and split "
                f"{split_b!r} ({label_b}): a leak between splits ({count} ids appear more than "
                "once); each id must belong to exactly one split."
            )
        raise ValueError(
            f"{source}: gravityspy_id {gid!r} appears twice in split {split_a!r}, as {label_a} "
            f"and {label_b} (a duplicate; {count} ids appear more than once); expected one "
            "sample per id."
        )


def index_h5(f: h5py.File, path: str, classes: Sequence[str]) -> dict[str, list[tuple[str, int]]]:
    """split -> [(gravityspy id, class index)] sorted by (class, id), from the file's keys only
    (no image is read); checks that no id is in two splits or under two labels."""
    by_split: dict[str, list[tuple[str, int]]] = collections.defaultdict(list)
    places: dict[str, list[tuple[str, str]]] = collections.defaultdict(list)
    for label_index, label in enumerate(classes):
        if label not in f:
            continue
        group = f[label]
        if not isinstance(group, h5py.Group):
            raise ValueError(f"{path}: /{label} is not a group; expected h5[label][split].")
        for split in sorted(group.keys()):
            for gid in sorted(group[split].keys()):
                by_split[split].append((gid, label_index))
                places[gid].append((label, split))
    check_splits_disjoint(places, path)
    return dict(by_split)


def check_view_layout(dataset: h5py.Dataset, where: str) -> None:
    """A view's dims and dtype from its metadata: (1, H, W) or (H, W), numeric."""
    if not isinstance(dataset, h5py.Dataset):
        raise ValueError(f"{where}: is a group; expected a (1, H, W) or (H, W) image dataset.")
    shape = dataset.shape
    if shape is None or len(shape) not in (2, 3) or (len(shape) == 3 and shape[0] != 1):
        raise ValueError(f"{where}: shape {shape}; expected a (1, H, W) or (H, W) image.")
    if min(shape[-2:]) < 2:
        raise ValueError(f"{where}: shape {shape}; expected an image of at least 2 x 2 pixels.")
    if dataset.dtype.kind not in "fiu":
        raise ValueError(
            f"{where}: dtype {dataset.dtype} is not numeric; expected a grayscale image (float "
            "in [0, 1] or uint8)."
        )


def index_png_tree(
    root: str, split: str, classes: Sequence[str]
) -> dict[tuple[int, str], dict[str, str]]:
    """(class index, "<ifo>_<id>") -> {duration: path} of one split; checks every split folder
    for ids in two splits (a leak) or two labels. PNGs not named like Gravity Spy's are counted
    and logged, not read."""
    files: dict[tuple[int, str], dict[str, str]] = collections.defaultdict(dict)
    places: dict[str, set[tuple[str, str]]] = collections.defaultdict(set)
    skipped = []
    for label_index, label in enumerate(classes):
        label_dir = os.path.join(root, label)
        if not os.path.isdir(label_dir):
            continue
        for sample_type in sorted(os.listdir(label_dir)):
            directory = os.path.join(label_dir, sample_type)
            if not os.path.isdir(directory):
                continue
            for name in sorted(os.listdir(directory)):
                match = PNG_PATTERN.match(name)
                if not match:
                    skipped += [os.path.join(directory, name)] if name.endswith(".png") else []
                    continue
                places[match["id"]].add((label, sample_type))
                if sample_type == split:
                    key = (label_index, f"{match['ifo']}_{match['id']}")
                    files[key][match["dur"]] = os.path.join(directory, name)
    if skipped:
        logging.warning(
            "%s: %d PNG files are not named <ifo>_<id>_spectrogram_<dur>.png and are not read "
            "(e.g. %s).",
            root,
            len(skipped),
            skipped[0],
        )
    check_splits_disjoint({gid: sorted(p) for gid, p in places.items()}, root)
    return files


METADATA_REQUIRED = ("gravityspy_id", "label", "sample_type", "ifo")


def read_metadata(path: str, classes: Sequence[str] | None = None) -> dict[str, dict[str, str]]:
    """`trainingset_v1d1_metadata.csv` -> {gravityspy_id: row}.

    One ValueError naming the file, the line and the column for: missing columns, a short
    (truncated) or long row, an empty gravityspy_id, a duplicated gravityspy_id, a label not in
    `classes` (when given), a sample_type that is not one of SPLITS, or bytes that are not text.
    """
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path}: no such file (the metadata CSV).")
    rows: dict[str, dict[str, str]] = {}
    first_line: dict[str, int] = {}
    try:
        with open(path, newline="") as f:
            reader = csv.DictReader(f, restkey="__extra__")
            missing = [c for c in METADATA_REQUIRED if c not in (reader.fieldnames or [])]
            if missing:
                raise ValueError(
                    f"{path}: missing columns {missing}; found {reader.fieldnames} (expected at "
                    f"least {list(METADATA_REQUIRED)})."
                )
            for row in reader:
                check_metadata_row(row, path, reader.line_num, len(reader.fieldnames), classes)
                gid = row["gravityspy_id"]
                if gid in rows:
                    raise ValueError(
                        f"{path}: line {reader.line_num}: gravityspy_id {gid!r} duplicates line "
                        f"{first_line[gid]}; expected one row per glitch."
                    )
                rows[gid], first_line[gid] = row, reader.line_num
    except (UnicodeDecodeError, csv.Error) as e:
        raise ValueError(f"{path}: not a readable CSV ({e}).") from e
    return rows


def check_metadata_row(
    row: dict, path: str, line: int, num_columns: int, classes: Sequence[str] | None
) -> None:
    """One metadata row: complete, with an id, a known label and sample_type."""
    if "__extra__" in row or any(value is None for value in row.values()):
        found = num_columns - sum(v is None for v in row.values()) + len(row.get("__extra__", []))
        raise ValueError(
            f"{path}: line {line} has {found} fields; expected {num_columns} (the header's). The "
            "file may be truncated."
        )
    if not row["gravityspy_id"]:
        raise ValueError(f"{path}: line {line}: empty gravityspy_id.")
    if classes is not None and row["label"] not in classes:
        raise ValueError(
            f"{path}: line {line}: label {row['label']!r} is not one of the {len(classes)} "
            "classes of config.data.classes."
        )
    if row["sample_type"] not in SPLITS:
        raise ValueError(
            f"{path}: line {line}: sample_type {row['sample_type']!r}; expected one of {SPLITS}."
        )


def check_metadata(source, metadata: dict[str, dict[str, str]], path: str) -> None:
    """Warns when the CSV disagrees with the images' labels (it never overrides them)."""
    disagree = [
        gid
        for gid, label in zip(source.ids, source.labels, strict=True)
        if gid in metadata and metadata[gid]["label"] != source.classes[label]
    ]
    absent = sum(gid not in metadata for gid in source.ids)
    if disagree or absent:
        logging.warning(
            "%s: %d ids of split %r have another label in the CSV, %d are not in it.",
            path,
            len(disagree),
            source.split,
            absent,
        )
