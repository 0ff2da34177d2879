"""Panel building, features, splits and CSV errors of the sales reader on hand-made Olist CSVs."""

import csv
import os

import numpy as np
import pandas as pd
import pytest

from jaxlab.configs import sales as sales_config
from jaxlab.sales import data, data_windows, synthetic


def _order(order_id, status, timestamp):
    return (order_id, "c", status, timestamp, "", "", "", "2017-02-01 00:00:00")


def _item(order_id, item_id, product):
    return (order_id, item_id, product, "s", "2017-01-10 00:00:00", "10.00", "1.00")


def _review(review_id, order_id, score, created, message="ok"):
    return (review_id, order_id, score, "", message, created, created)


def write_hand_made(directory, orders, items, reviews):
    synthetic.write_csv(
        os.path.join(directory, synthetic.ORDERS_FILE), synthetic.ORDERS_HEADER, orders
    )
    synthetic.write_csv(
        os.path.join(directory, synthetic.ITEMS_FILE), synthetic.ITEMS_HEADER, items
    )
    synthetic.write_csv(
        os.path.join(directory, synthetic.REVIEWS_FILE), synthetic.REVIEWS_HEADER, reviews
    )


@pytest.fixture
def hand_made(tmp_path):
    orders = [
        _order("o1", "delivered", "2017-01-01 10:00:00"),  # A x2 (two item rows), B x1
        _order("o2", "delivered", "2017-01-01 23:59:59"),  # A x1, same day
        _order("o3", "canceled", "2017-01-02 09:00:00"),  # excluded status
        _order("o4", "shipped", "2017-01-04 08:00:00"),  # A x1 -> Jan 2 and 3 are filled zeros
        _order("o5", "delivered", "2017-01-03 12:00:00"),  # C x1: below min_sales
    ]
    items = [
        _item("o1", 1, "A"),
        _item("o1", 2, "A"),
        _item("o1", 3, "B"),
        _item("o2", 1, "A"),
        _item("o3", 1, "A"),
        _item("o4", 1, "A"),
        _item("o5", 1, "C"),
        _item("o5", 2, "B"),
        _item("o3", 2, "B"),
    ]
    reviews = [
        # Two reviews written on Jan 3 of orders holding A: mean (5 + 2) / 2. o1 also holds B.
        _review("r1", "o1", 5, "2017-01-03 00:00:00", 'great, "really"\nwould buy again'),
        _review("r2", "o2", 2, "2017-01-03 15:00:00", "bad, broken"),
        _review("r3", "o3", 1, "2017-01-03 00:00:00"),  # canceled order: ignored
    ]
    write_hand_made(str(tmp_path), orders, items, reviews)
    return str(tmp_path)


def test_panel_joins_fills_and_review_averages(hand_made):
    panel, report = data.build_panel(hand_made, min_sales=2)
    a = panel[panel["product_id"] == "A"].set_index("date")
    assert list(a.index) == list(pd.date_range("2017-01-01", "2017-01-04"))
    # Jan 1: 2 item rows of o1 + 1 of o2; Jan 2 only had the canceled o3 -> 0; Jan 3 filled 0.
    assert a["sales"].tolist() == [3, 0, 0, 1]
    assert a["review_count"].tolist() == [0, 0, 2, 0]
    assert a.loc["2017-01-03", "review_score_mean"] == pytest.approx(3.5)
    b = panel[panel["product_id"] == "B"].set_index("date")
    assert b["sales"].tolist() == [1, 0, 1]  # o1 on Jan 1, o5 on Jan 3 (o3 canceled)
    assert b.loc["2017-01-03", "review_count"] == 1  # r1 of o1, which holds B too
    assert "C" not in set(panel["product_id"])  # 1 unit < min_sales
    assert report["products_below_min_sales"] == 1 and report["products_kept"] == 2


def test_panel_parquet_round_trip(hand_made, tmp_path):
    panel, _ = data.build_panel(hand_made, min_sales=1)
    path = str(tmp_path / "panel.parquet")
    data.write_panel(panel, path)
    back = data.read_panel(path)
    pd.testing.assert_frame_equal(
        back.reset_index(drop=True), panel.reset_index(drop=True), check_dtype=False
    )


def test_missing_column_is_one_clear_error(tmp_path):
    path = tmp_path / synthetic.ORDERS_FILE
    path.write_text("order_id,customer_id,order_status\no1,c,delivered\n")
    with pytest.raises(
        ValueError,
        match=r"olist_orders_dataset.csv: missing column.*"
        r"order_purchase_timestamp",
    ):
        data.read_csv(str(path), {"order_id": "string", "order_purchase_timestamp": "timestamp"})


def test_bad_timestamp_names_file_column_and_value(tmp_path):
    orders = [
        _order("o1", "delivered", "2017-01-01 10:00:00"),
        _order("o2", "delivered", "01/02/2017 10:00"),
    ]
    write_hand_made(str(tmp_path), orders, [_item("o1", 1, "A")], [])
    with pytest.raises(
        ValueError,
        match=r"olist_orders_dataset.csv: column "
        r"'order_purchase_timestamp', record 2.*'01/02/2017 10:00'",
    ):
        data.build_panel(str(tmp_path), min_sales=1)


def test_bad_review_score_and_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="olist_orders_dataset.csv"):
        data.build_panel(str(tmp_path), min_sales=1)
    orders = [_order("o1", "delivered", "2017-01-01 10:00:00")]
    write_hand_made(
        str(tmp_path),
        orders,
        [_item("o1", 1, "A")],
        [_review("r1", "o1", "four", "2017-01-02 00:00:00")],
    )
    with pytest.raises(ValueError, match=r"'review_score', record 1.*'four'"):
        data.build_panel(str(tmp_path), min_sales=1)


def _long_panel(num_days=200, seed=0):
    rng = np.random.default_rng(seed)
    dates = pd.date_range("2017-01-02", periods=num_days)
    frames = []
    for product in ("p0", "p1"):
        frames.append(
            pd.DataFrame(
                {
                    "product_id": product,
                    "date": dates,
                    "sales": rng.poisson(3.0, num_days).astype(np.int32),
                    "review_count": rng.poisson(0.5, num_days).astype(np.int32),
                    "review_score_mean": np.float32(4.0),
                }
            )
        )
    panel = pd.concat(frames, ignore_index=True)
    panel.loc[panel["review_count"] == 0, "review_score_mean"] = 0.0
    return panel


def test_normalisation_uses_training_period_only():
    panel = _long_panel()
    arrays = data_windows.make_panel_arrays(panel)
    changed = panel.copy()
    late = changed["date"] >= pd.Timestamp(arrays.train_end)
    changed.loc[late, "sales"] = 1000  # a huge spike after the training period
    arrays_changed = data_windows.make_panel_arrays(changed)
    np.testing.assert_array_equal(arrays.sales_min, arrays_changed.sales_min)
    np.testing.assert_array_equal(arrays.sales_scale, arrays_changed.sales_scale)
    in_train = arrays.dates < arrays.train_end
    np.testing.assert_array_equal(arrays.sales_norm[in_train], arrays_changed.sales_norm[in_train])
    for p in range(2):
        rows = slice(arrays.offsets[p], arrays.offsets[p + 1])
        train_sales = arrays.sales[rows][arrays.dates[rows] < arrays.train_end]
        assert arrays.sales_min[p] == train_sales.min()
        assert arrays.sales_scale[p] == train_sales.max() - train_sales.min()
    # Features: Jan 2 2017 is a Monday; rating 4 stars -> 0.75 once a review exists.
    assert arrays.features[0, :8].tolist() == [1, 0, 0, 0, 0, 0, 0, 0]
    assert arrays.features[5, 5] == 1 and arrays.features[5, 7] == 1  # Saturday, weekend
    rating = arrays.features[:, 8]
    assert np.all((rating >= 0) & (rating <= 1)) and np.isclose(rating[-1], 0.75)
    assert np.all(arrays.features[:, 9] >= 0)


def test_splits_are_chronological_and_windows_stay_inside():
    arrays = data_windows.make_panel_arrays(_long_panel())
    assert arrays.train_end == np.datetime64("2017-01-02") + np.timedelta64(140, "D")
    assert arrays.val_end == np.datetime64("2017-01-02") + np.timedelta64(170, "D")
    sources = {s: data_windows.WindowSource(arrays, s, 30, 7, 1) for s in data_windows.SPLITS}
    first = {s: v.target_dates() for s, v in sources.items()}
    last = {s: d + np.timedelta64(6, "D") for s, d in first.items()}
    assert last["train"].max() < arrays.train_end <= first["val"].min()
    assert last["val"].max() < arrays.val_end <= first["test"].min()
    record = sources["test"][3]
    p, row = sources["test"].windows[3]
    np.testing.assert_array_equal(record["target"], arrays.sales_norm[row + 30 : row + 37])
    assert record["history_sales"].shape == (30,) and record["history_features"].shape == (30, 10)
    assert record["target_features"].shape == (7, 8)


def test_synthetic_csvs_have_real_headers_and_quoted_text(tmp_path):
    synthetic.write_dataset(str(tmp_path), num_products=12, num_days=60, seed=0)
    with open(tmp_path / synthetic.PRODUCTS_FILE, newline="") as f:
        header = next(csv.reader(f))
    assert "product_name_lenght" in header and "product_description_lenght" in header
    reviews = data.read_csv(
        str(tmp_path / synthetic.REVIEWS_FILE),
        {"review_id": "string", "review_comment_message": "string", "review_score": "int"},
    )
    with open(tmp_path / synthetic.REVIEWS_FILE, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    assert len(reviews) == len(rows) > 0
    assert reviews["review_comment_message"].str.contains("\n").any()
    assert reviews["review_comment_message"].tolist() == [r["review_comment_message"] for r in rows]
    panel, report = data.build_panel(str(tmp_path), min_sales=5)
    assert report["products_kept"] > 0 and panel["sales"].sum() > 0


def test_real_data_without_a_path_is_one_clear_error(tmp_path):
    config = sales_config.get_config("paper")
    with pytest.raises(ValueError, match=r"config.data.panel_path .* config.data.csv_dir"):
        data.prepare(config, str(tmp_path))


def test_generated_parquet_round_trip_and_augmented_set(tmp_path):
    arrays = data_windows.make_panel_arrays(_long_panel())
    source = data_windows.WindowSource(arrays, "train", 30, 7, 5)
    samples = np.random.default_rng(0).random((len(source), 2, 7)).astype(np.float32)
    path = str(tmp_path / "generated.parquet")
    data_windows.write_generated(path, source, samples)
    window, target = data_windows.read_generated(path, 7)
    np.testing.assert_array_equal(target, samples.reshape(-1, 7))
    np.testing.assert_array_equal(window, np.repeat(np.arange(len(source)), 2))
    augmented = data_windows.AugmentedSource(source, window, target, ratio=0.5, seed=0)
    assert len(augmented) == len(source) + round(0.5 * len(source))
    record = augmented[len(source)]  # the first generated record: a real window, new target
    real = source[int(augmented.window[0])]
    np.testing.assert_array_equal(record["history_sales"], real["history_sales"])
    assert record["is_synthetic"] == 1 and not np.array_equal(record["target"], real["target"])
