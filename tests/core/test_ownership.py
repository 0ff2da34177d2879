"""Synthetic writers never touch a user's folder: the claim refuses it and changes nothing."""

import json

import pytest

from jaxlab.data import ownership
from tests.folder_md5 import md5_tree


@pytest.fixture
def user_dir(tmp_path):
    root = tmp_path / "olist"
    root.mkdir()
    (root / "olist_orders_dataset.csv").write_text("order_id,customer_id\n1,2\n")
    (root / "olist_order_items_dataset.csv").write_text("order_id,price\n1,9.5\n")
    (root / "sub").mkdir()
    (root / "sub" / "notes.txt").write_text("mine")
    return root


def test_user_folder_is_refused_and_left_unchanged(user_dir):
    before = md5_tree(user_dir)
    with pytest.raises(ownership.DataDirError) as error:
        ownership.claim_synthetic_dir(str(user_dir))
    message = str(error.value)
    assert message.startswith(f"{user_dir} holds files that jaxlab did not write (e.g. ")
    assert "olist_order_items_dataset.csv, olist_orders_dataset.csv, sub" in message
    assert "set data.synthetic=False to use them, or point data.dir at an empty folder" in message
    assert md5_tree(user_dir) == before and not (user_dir / ownership.MARKER).exists()
    for name in ("olist_orders_dataset.csv", "sub/notes.txt"):
        with pytest.raises(ownership.DataDirError, match="jaxlab did not write it"):
            ownership.check_not_overwriting(str(user_dir / name))
    assert md5_tree(user_dir) == before


def test_missing_and_empty_folders_are_claimed_with_a_marker(tmp_path):
    for root in (tmp_path / "new" / "data", tmp_path / "empty"):
        if root.name == "empty":
            root.mkdir()
        assert ownership.claim_synthetic_dir(str(root)) == str(root)
        note = json.loads((root / ownership.MARKER).read_text())
        assert note["written_by"] == "jaxlab" and ownership.is_synthetic_dir(str(root))


def test_marked_folder_is_accepted_again_and_its_files_may_be_replaced(tmp_path):
    root = tmp_path / "synthetic"
    ownership.claim_synthetic_dir(str(root))
    (root / "hrrr.20240601" / "conus").mkdir(parents=True)
    data = root / "hrrr.20240601" / "conus" / "hrrr.t00z.wrfsfcf00.grib2"
    data.write_bytes(b"GRIB")
    assert ownership.claim_synthetic_dir(str(root)) == str(root)  # a rerun
    assert ownership.check_not_overwriting(str(data)) == str(data)  # marker found above it
    assert ownership.check_not_overwriting(str(tmp_path / "elsewhere.csv"))  # new file: fine


def test_a_file_instead_of_a_folder_is_a_clear_error(tmp_path):
    path = tmp_path / "data"
    path.write_text("not a folder")
    with pytest.raises(ownership.DataDirError, match=f"{path} is a file, not a folder"):
        ownership.claim_synthetic_dir(str(path))
    with pytest.raises(ownership.DataDirError, match="a parent is a file"):
        ownership.claim_synthetic_dir(str(path / "inner"))
    with pytest.raises(ownership.DataDirError, match="is a folder"):
        ownership.check_not_overwriting(str(tmp_path))
    assert path.read_text() == "not a folder"
