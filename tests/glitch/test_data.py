"""Readers of the Gravity Spy h5 / PNG tree on files written in the published layout."""

import os
import shutil

import h5py
import numpy as np
import pytest

from jaxlab.configs import glitch as glitch_config
from jaxlab.glitch import data, synthetic
from tests.folder_md5 import md5_tree


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    directory = str(tmp_path_factory.mktemp("gravityspy"))
    synthetic.write_dataset(
        directory,
        samples_per_class=6,
        min_per_class=6,
        image_shape=(28, 34),
        png_per_split=1,
        seed=0,
    )
    return directory


def _h5(data_dir):
    return os.path.join(data_dir, synthetic.H5_NAME)


def test_layout_matches_published_format(data_dir):
    with h5py.File(_h5(data_dir), "r") as f:
        assert sorted(f.keys()) == sorted(synthetic.CLASSES) and len(f.keys()) == 22
        for label in f:
            assert sorted(f[label].keys()) == sorted(synthetic.SPLITS)
        sample = next(iter(f["Blip/train"].values()))
        assert sorted(sample.keys()) == ["0.5.png", "1.0.png", "2.0.png", "4.0.png"]
        assert sample["0.5.png"].shape == (1, 28, 34) and sample["0.5.png"].dtype == np.float32
    rows = data.read_metadata(os.path.join(data_dir, synthetic.METADATA_NAME))
    row = next(iter(rows.values()))
    assert list(row) == list(synthetic.METADATA_COLUMNS)


def test_h5_records_lazy_open_and_shapes(data_dir):
    source = data.GravitySpyH5(_h5(data_dir), "test", image_size=16)
    assert source._file is None  # not opened by __init__
    record = source[3]
    assert source._file is not None
    assert record["image"].shape == (4, 16, 16, 3) and record["image"].dtype == np.float32
    np.testing.assert_array_equal(record["image"][..., 0], record["image"][..., 2])  # gray x3
    assert source.classes[record["label"]] in synthetic.CLASSES
    # every class is present in every split
    assert set(source.labels.tolist()) == set(range(22))
    single = data.GravitySpyH5(_h5(data_dir), "test", image_size=16, multi_view=False, view="2.0")
    np.testing.assert_allclose(single[3]["image"], record["image"][2], atol=1e-6)
    # raw views: the stored (1, H, W) array's [0], values in [0, 1]
    with h5py.File(_h5(data_dir), "r") as f:
        stored = f[source._sample_path(3)]["1.0.png"][0]
    np.testing.assert_array_equal(source.read_views(3)[1], stored)


def test_h5_source_pickles_without_handle(data_dir):
    import pickle

    source = data.GravitySpyH5(_h5(data_dir), "train", image_size=16, cache=True)
    first = source[0]
    clone = pickle.loads(pickle.dumps(source))
    assert clone._file is None and clone._cache == {}
    np.testing.assert_array_equal(clone[0]["image"], first["image"])


def _copy_with(data_dir, tmp_path, edit):
    path = str(tmp_path / synthetic.H5_NAME)
    with h5py.File(_h5(data_dir), "r") as src, h5py.File(path, "w") as dst:
        for label in src:
            src.copy(src[label], dst, name=label)
        edit(dst)
    return path


def test_accepts_2d_datasets(data_dir, tmp_path):
    def flatten(f):
        for sample in f["Blip/test"].values():
            for name in list(sample):
                image = sample[name][0]
                del sample[name]
                levels = np.round(image * 255).astype(np.uint8)
                sample.create_dataset(name, data=levels)  # (H, W) uint8

    path = _copy_with(data_dir, tmp_path, flatten)
    source = data.GravitySpyH5(path, "test", image_size=16)
    original = data.GravitySpyH5(_h5(data_dir), "test", image_size=16)
    blip = int(np.flatnonzero(source.labels == source.classes.index("Blip"))[0])
    # Gray values rounded to 8-bit levels: off by <= 0.5 / 255, i.e. 1 / 255 after (x - 0.5) / 0.5.
    np.testing.assert_allclose(source[blip]["image"], original[blip]["image"], atol=1 / 255 + 1e-6)


def test_missing_split_is_clear(data_dir):
    with pytest.raises(ValueError, match=r"no samples of split 'valid'.*splits in the file"):
        data.GravitySpyH5(_h5(data_dir), "valid", image_size=16)


def test_missing_file_is_clear(tmp_path):
    with pytest.raises(FileNotFoundError, match="trainingsetv1d1.h5"):
        data.GravitySpyH5(str(tmp_path / "trainingsetv1d1.h5"), "train", image_size=16)


def test_missing_duration_is_clear(data_dir, tmp_path):
    def drop(f):
        gid = sorted(f["Blip/test"].keys())[1]
        del f[f"Blip/test/{gid}/2.0.png"]

    path = _copy_with(data_dir, tmp_path, drop)
    with pytest.raises(ValueError, match=r"Blip/test/.* has no dataset '2\.0\.png'.*expected one"):
        data.GravitySpyH5(path, "test", image_size=16)  # checked when indexed, before training


@pytest.mark.parametrize("damage", ["garbage", "truncated"])
def test_unreadable_h5_file_is_clear(data_dir, tmp_path, damage):
    path = str(tmp_path / synthetic.H5_NAME)
    with open(_h5(data_dir), "rb") as f:
        content = f.read()
    with open(path, "wb") as f:
        f.write(b"not an hdf5 file" * 64 if damage == "garbage" else content[: len(content) // 2])
    with pytest.raises(ValueError, match=f"{path}: not a readable HDF5 file"):
        data.GravitySpyH5(path, "train", image_size=16)


def test_corrupt_dataset_bytes_are_clear(data_dir, tmp_path):
    def find_chunk(f):
        gid = sorted(f["Whistle/test"].keys())[0]
        info = f[f"Whistle/test/{gid}/1.0.png"].id.get_chunk_info(0)
        offsets.append((gid, info.byte_offset, info.size))

    offsets = []
    path = _copy_with(data_dir, tmp_path, find_chunk)
    gid, offset, size = offsets[0]
    with open(path, "r+b") as f:  # overwrite the gzip stream of one view
        f.seek(offset)
        f.write(b"\xff" * size)
    source = data.GravitySpyH5(path, "test", image_size=16)
    whistle = int(np.flatnonzero(source.ids == gid)[0])
    with pytest.raises(ValueError, match=rf"Whistle/test/{gid}/1\.0\.png: unreadable dataset"):
        source[whistle]


def test_metadata_missing_columns_is_clear(tmp_path):
    path = str(tmp_path / "meta.csv")
    with open(path, "w") as f:
        f.write("gravityspy_id,label\n0a1b,Blip\n")
    with pytest.raises(ValueError, match=r"missing columns \['sample_type', 'ifo'\]"):
        data.read_metadata(path)


def test_png_tree_with_crop_matches_h5(data_dir):
    left, top, right, bottom = synthetic.PNG_MARGINS
    crop = (left, top, left + 34, top + 28)
    pngs = data.GravitySpyPngTree(os.path.join(data_dir, "png"), "test", image_size=16, crop=crop)
    h5 = data.GravitySpyH5(_h5(data_dir), "test", image_size=16)
    assert pngs.classes == h5.classes and len(pngs) == 22
    uncropped = data.GravitySpyPngTree(os.path.join(data_dir, "png"), "test", image_size=16)
    for i in range(0, 22, 5):
        j = int(np.flatnonzero(h5.ids == pngs.ids[i])[0])
        from_png, from_h5 = pngs.read_views(i), h5.read_views(j)
        assert from_png[0].shape == (28, 34)
        for a, b in zip(from_png, from_h5, strict=True):  # the h5 is the PNG's rgb2gray
            np.testing.assert_array_equal(a, b)
        assert uncropped.read_views(i)[0].shape == (28 + top + bottom, 34 + left + right)
    with pytest.raises(ValueError, match="crop box .* lies outside"):
        data.GravitySpyPngTree(
            os.path.join(data_dir, "png"), "test", image_size=16, crop=(0, 0, 999, 999)
        ).read_views(0)


def test_class_weights_balanced_formula():
    labels = np.array([0, 0, 0, 1, 2, 2])
    weights = data.class_weights(labels, 4)
    np.testing.assert_allclose(weights, [6 / 9, 6 / 3, 6 / 6, 0.0], rtol=1e-6)
    from sklearn.utils.class_weight import compute_class_weight

    np.testing.assert_allclose(
        weights[:3], compute_class_weight("balanced", classes=np.arange(3), y=labels), rtol=1e-6
    )


def test_config_load_png_format(data_dir):
    config = glitch_config.get_config("tiny")
    config.data.format = "png"
    config.data.png_crop = (60, 30, 94, 58)
    source = data.load(config, data_dir, "validation")
    assert source[0]["image"].shape == (4, 32, 32, 3)


@pytest.mark.parametrize("multi_view", [True, False])
def test_shift_augment_moves_columns_and_repeats_the_edge(multi_view):
    shape = (4, 6, 6, 3) if multi_view else (6, 6, 3)
    image = np.arange(np.prod(shape), dtype=np.float32).reshape(shape)
    record = {"image": image, "label": np.int32(3)}
    augment = data.shift_augment(max_shift=3)
    shifts = set()
    for seed in range(12):
        shift = int(np.random.default_rng(seed).integers(-3, 4))  # the draw augment makes
        out = augment(record, np.random.default_rng(seed))["image"]
        shifts.add(shift)
        # Column c of the output is column c - shift of the input, clipped to the image.
        for c in range(6):
            source = min(max(c - shift, 0), 5)
            np.testing.assert_array_equal(out[..., c, :], image[..., source, :])
    assert len(shifts) > 3  # both directions and no shift were exercised


def test_synthetic_prepare_never_touches_a_users_folder(data_dir, tmp_path):
    """A user with the PNG tree and the metadata CSV but no h5, and a demo config pointed there:
    one error, and every file byte-identical with nothing added (it used to replace the CSV and
    write a synthetic h5, then train on it)."""
    from jaxlab.data import ownership

    user = tmp_path / "gravityspy"
    shutil.copytree(os.path.join(data_dir, "png"), user / "png")
    shutil.copy(os.path.join(data_dir, synthetic.METADATA_NAME), user)
    before = md5_tree(user)
    config = glitch_config.get_config("tiny")
    config.data.dir = str(user)
    with pytest.raises(ownership.DataDirError, match=rf"{user} holds files that jaxlab did not"):
        data.prepare(config, str(tmp_path / "workdir"))
    assert md5_tree(user) == before and synthetic.METADATA_NAME in before
    # The default location (under the workdir) and a re-run over jaxlab's own folder both work.
    config.data.dir = ""
    first = data.prepare(config, str(tmp_path / "workdir"))
    stamp = os.path.getmtime(os.path.join(first, synthetic.H5_NAME))
    assert data.prepare(config, str(tmp_path / "workdir")) == first
    assert os.path.getmtime(os.path.join(first, synthetic.H5_NAME)) == stamp
