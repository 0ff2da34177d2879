"""Bad Gravity Spy inputs: each gives one error naming the file and the field, never a silent
drop, a new class or a leak."""

import os
import re
import shutil

import h5py
import numpy as np
import pytest

from jaxlab.configs import glitch as glitch_config
from jaxlab.glitch import data, predict, synthetic

CLASSES = glitch_config.CLASSES


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    directory = str(tmp_path_factory.mktemp("gravityspy_bad"))
    synthetic.write_dataset(
        directory, samples_per_class=6, min_per_class=6, image_shape=(28, 34), png_per_split=1
    )
    return directory


def _h5_copy(data_dir, tmp_path, edit):
    path = str(tmp_path / synthetic.H5_NAME)
    shutil.copy(os.path.join(data_dir, synthetic.H5_NAME), path)
    with h5py.File(path, "r+") as f:
        edit(f)
    return path


def _first(f, group):
    return sorted(f[group].keys())[0]


def _open(path, split="test"):
    return data.GravitySpyH5(path, split, image_size=16, classes=CLASSES)


def test_config_classes_are_the_synthetic_and_published_ones():
    assert CLASSES == synthetic.CLASSES and len(CLASSES) == 22


def test_unknown_label_group_is_an_error_not_a_23rd_class(data_dir, tmp_path):
    path = _h5_copy(data_dir, tmp_path, lambda f: f.move("Blip", "Blipp"))
    with pytest.raises(ValueError, match=rf"{path}: label group 'Blipp' is not one of the 22"):
        _open(path)


def test_same_id_in_train_and_test_is_a_leak(data_dir, tmp_path):
    def leak(f):
        gid = _first(f, "Helix/test")
        f.copy(f[f"Helix/test/{gid}"], f"Helix/train/{gid}")
        leaked.append(gid)

    leaked = []
    path = _h5_copy(data_dir, tmp_path, leak)
    for split in ("train", "test"):  # whichever split is read, the leak is found
        with pytest.raises(ValueError, match=rf"{path}: gravityspy_id '{leaked[0]}' .*a leak"):
            _open(path, split)


def test_same_id_under_two_labels_is_a_duplicate(data_dir, tmp_path):
    def duplicate(f):
        gid = _first(f, "Helix/test")
        f.copy(f[f"Helix/test/{gid}"], f"Tomte/test/{gid}")

    path = _h5_copy(data_dir, tmp_path, duplicate)
    with pytest.raises(ValueError, match=rf"{path}: .*appears twice in split 'test', as Helix"):
        _open(path)


@pytest.mark.parametrize(
    "bad, message, when",
    [
        (np.zeros((3, 28, 34), np.float32), r"shape \(3, 28, 34\); expected a \(1, H, W\)", "open"),
        (np.zeros((1, 28), np.float32), r"shape \(1, 28\); expected an image of at least", "open"),
        (np.array([[b"ab", b"cd"], [b"ef", b"gh"]]), r"dtype \|S2 is not numeric", "open"),
        (np.full((1, 28, 34), np.nan, np.float32), "holds NaN or Inf", "read"),
        (np.full((1, 28, 34), np.inf, np.float32), "holds NaN or Inf", "read"),
        (
            np.full((1, 28, 34), -5.0, np.float32),
            r"values in \[-5, -5\]; expected \[0, 1\]",
            "read",
        ),
    ],
)
def test_bad_view_names_file_and_dataset(data_dir, tmp_path, bad, message, when):
    def corrupt(f):
        gid = _first(f, "Chirp/test")
        del f[f"Chirp/test/{gid}/0.5.png"]
        f.create_dataset(f"Chirp/test/{gid}/0.5.png", data=bad)
        where.append(f"/Chirp/test/{gid}/0.5.png")

    where = []
    path = _h5_copy(data_dir, tmp_path, corrupt)
    with pytest.raises(ValueError, match=message) as info:
        source = _open(path)
        if when == "read":
            source[int(np.flatnonzero(source.ids == where[0].split("/")[3])[0])]
    assert f"{path}: {where[0]}" in str(info.value)


@pytest.mark.parametrize("damage", ["empty", "truncated"])
def test_empty_or_truncated_h5_names_the_file(data_dir, tmp_path, damage):
    path = str(tmp_path / synthetic.H5_NAME)
    with open(os.path.join(data_dir, synthetic.H5_NAME), "rb") as f:
        content = f.read()
    with open(path, "wb") as f:
        f.write(b"" if damage == "empty" else content[: len(content) // 3])
    with pytest.raises(ValueError, match=rf"{path}: (not a readable HDF5|unreadable HDF5)"):
        _open(path)


def _csv_copy(data_dir, tmp_path, edit):
    with open(os.path.join(data_dir, synthetic.METADATA_NAME)) as f:
        lines = f.read().splitlines(keepends=True)
    path = str(tmp_path / synthetic.METADATA_NAME)
    with open(path, "w") as f:
        f.write("".join(edit(lines)))
    return path


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda lines: [], r"missing columns \['gravityspy_id', 'label', 'sample_type', 'ifo'\]"),
        (lambda lines: lines[:5] + [lines[5][:40]], r"line 6 has \d+ fields; expected 20 .*trunc"),
        (lambda lines: [*lines, lines[3]], r"line {n}: gravityspy_id '.*' duplicates line 4"),
        (
            lambda lines: [*lines[:3], lines[3].replace(",1080Lines,", ",Glitchy,")],
            r"line 4: label 'Glitchy' is not one of the 22 classes",
        ),
        (
            lambda lines: [
                *lines[:3],
                re.sub(",1080Lines,[a-z]+,", ",1080Lines,holdout,", lines[3]),
            ],
            r"line 4: sample_type 'holdout'; expected one of",
        ),
        (
            lambda lines: [lines[0].replace("label", "lable"), *lines[1:]],
            r"missing columns \['label'\]",
        ),
    ],
    ids=["empty", "truncated", "duplicate_id", "unknown_label", "unknown_split", "renamed_column"],
)
def test_bad_metadata_csv_names_file_line_and_column(data_dir, tmp_path, edit, message):
    path = _csv_copy(data_dir, tmp_path, edit)
    with open(path) as f:
        n = len(f.read().splitlines())
    with pytest.raises(ValueError, match=message.replace("{n}", str(n))) as info:
        data.read_metadata(path, CLASSES)
    assert str(info.value).startswith(path)


def test_png_tree_unknown_label_folder_and_leak(data_dir, tmp_path):
    root = str(tmp_path / "png")
    shutil.copytree(os.path.join(data_dir, "png"), root)
    shutil.copytree(os.path.join(root, "Blip"), os.path.join(root, "Bleep"))
    with pytest.raises(ValueError, match=rf"{root}: label folder 'Bleep' is not one of the 22"):
        data.GravitySpyPngTree(root, "test", image_size=16, classes=CLASSES)
    shutil.rmtree(os.path.join(root, "Bleep"))
    shutil.copytree(os.path.join(root, "Blip", "test"), os.path.join(root, "Blip", "train2"))
    with pytest.raises(ValueError, match=rf"{root}: gravityspy_id .* in split .*a leak"):
        data.GravitySpyPngTree(root, "train", image_size=16, classes=CLASSES)


def test_predict_inputs_missing_duration_and_duplicate_ids(data_dir, tmp_path):
    png_test = os.path.join(data_dir, "png", "Koi_Fish", "test")
    folder = tmp_path / "pngs"
    folder.mkdir()
    for name in sorted(os.listdir(png_test))[:3]:  # three of the four durations
        shutil.copy(os.path.join(png_test, name), folder / name)
    with pytest.raises(ValueError, match=r"_spectrogram_.*\.png: gravityspy_id .* no PNG for dur"):
        predict.png_samples(str(folder), tuple(data.DURATIONS))
    nested = folder / "again"
    nested.mkdir()
    shutil.copy(os.path.join(png_test, sorted(os.listdir(png_test))[0]), nested)
    with pytest.raises(ValueError, match=r"duration 0\.5 also in .*expected one PNG per id"):
        predict.png_samples(str(folder), tuple(data.DURATIONS))

    path = str(tmp_path / "new.h5")
    with h5py.File(path, "w") as f:
        for group in ("a/g1", "b/g1"):
            for dur in data.DURATIONS:
                f.create_dataset(f"{group}/{dur}.png", data=np.zeros((1, 4, 4), np.float32))
        f.create_dataset("c/g2/0.5.png", data=np.zeros((1, 4, 4), np.float32))
    with pytest.raises(ValueError, match=rf"{path}: /c/g2 has datasets \['0\.5\.png'\]"):
        predict.h5_samples(path, tuple(data.DURATIONS))
    with h5py.File(path, "r+") as f:
        del f["c"]
    with pytest.raises(ValueError, match=rf"{path}: sample id 'g1' at /a/g1 and /b/g1"):
        predict.h5_samples(path, tuple(data.DURATIONS), group="/")
    assert predict.h5_samples(path, tuple(data.DURATIONS), group="/a") == [("g1", "/a/g1")]
