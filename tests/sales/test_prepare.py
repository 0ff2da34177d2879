"""`data.prepare`: the Kaggle layout (Olist found under data.kaggle_input) and the rule that
synthetic data never touches a user's folder."""

import os

import pandas as pd
import pytest

from jaxlab.configs import sales as sales_config
from jaxlab.data import ownership
from jaxlab.sales import data, synthetic
from tests.folder_md5 import md5_tree


def _real_config(kaggle_input):
    config = sales_config.get_config("tiny")
    config.data.synthetic = False
    config.data.min_sales = 5
    config.data.kaggle_input = str(kaggle_input)
    return config


def test_paper_variant_looks_under_kaggle_input():
    assert sales_config.get_config("paper").data.kaggle_input == "/kaggle/input"
    assert sales_config.get_config("demo").data.kaggle_input == ""


def test_olist_folder_is_found_under_a_fake_kaggle_input(tmp_path):
    kaggle_input = tmp_path / "kaggle" / "input"
    # Kaggle mounts a dataset as /kaggle/input/<slug>/; here one level deeper, beside another one.
    (kaggle_input / "another-dataset").mkdir(parents=True)
    (kaggle_input / "another-dataset" / "readme.txt").write_text("not olist")
    olist = kaggle_input / "brazilian-ecommerce" / "v2"
    synthetic.write_dataset(str(olist), num_products=12, num_days=60, seed=0)
    assert data.find_olist_dir(str(kaggle_input)) == str(olist)

    workdir = tmp_path / "kaggle" / "working" / "sales_paper"
    config = _real_config(kaggle_input)
    panel_path = data.prepare(config, str(workdir))
    assert panel_path == str(workdir / "data" / "panel.parquet")
    expected, _ = data.build_panel(str(olist), min_sales=5, exclude_statuses=("canceled",))
    got = pd.read_parquet(panel_path)
    assert len(got) == len(expected) > 0
    assert got["sales"].sum() == expected["sales"].sum()
    # The input tree is read only: nothing was written there.
    assert sorted(os.listdir(kaggle_input)) == ["another-dataset", "brazilian-ecommerce"]
    assert not os.path.exists(olist / ownership.MARKER)


def test_no_olist_under_kaggle_input_is_one_clear_error(tmp_path):
    (tmp_path / "input" / "other").mkdir(parents=True)
    with pytest.raises(ValueError, match="kaggle_input.*input"):
        data.prepare(_real_config(tmp_path / "input"), str(tmp_path / "work"))


def test_synthetic_writer_refuses_a_users_folder(tmp_path):
    user = tmp_path / "my_olist"
    user.mkdir()
    (user / synthetic.ORDERS_FILE).write_text("order_id,order_status\nabc,delivered\n")
    (user / "notes.txt").write_text("mine")
    before = md5_tree(user)
    config = sales_config.get_config("tiny")
    config.data.csv_dir = str(user)  # synthetic stays True: it would write into the user's CSVs
    with pytest.raises(ownership.DataDirError, match="my_olist"):
        data.prepare(config, str(tmp_path / "work"))
    assert md5_tree(user) == before
    assert not os.path.exists(tmp_path / "work" / "data" / "panel.parquet")
