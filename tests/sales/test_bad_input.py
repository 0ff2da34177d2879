"""Bad Olist input: one clear error naming the file and the column, or a counted, logged policy.

Tiny CSVs with the real Olist headers (`synthetic.*_HEADER`) in tmp_path; no training.
"""

import os

import pytest

from jaxlab.configs import sales as sales_config
from jaxlab.sales import data, synthetic

ORDERS = [
    ("o1", "c", "delivered", "2017-01-01 10:00:00", "", "", "", "2017-02-01 00:00:00"),
    ("o2", "c", "delivered", "2017-01-02 10:00:00", "", "", "", "2017-02-01 00:00:00"),
]
ITEMS = [
    ("o1", 1, "A", "s", "2017-01-10 00:00:00", "10.00", "1.00"),
    ("o1", 2, "A", "s", "2017-01-10 00:00:00", "10.00", "1.00"),
    ("o2", 1, "A", "s", "2017-01-10 00:00:00", "12.50", "1.00"),
]
REVIEWS = [("r1", "o1", 5, "", "ok", "2017-01-03 00:00:00", "2017-01-03 00:00:00")]


def write(directory, orders=ORDERS, items=ITEMS, reviews=REVIEWS):
    for name, header, rows in (
        (synthetic.ORDERS_FILE, synthetic.ORDERS_HEADER, orders),
        (synthetic.ITEMS_FILE, synthetic.ITEMS_HEADER, items),
        (synthetic.REVIEWS_FILE, synthetic.REVIEWS_HEADER, reviews),
    ):
        synthetic.write_csv(os.path.join(directory, name), header, rows)
    return str(directory)


def build(directory, **kwargs):
    return data.build_panel(str(directory), min_sales=1, **kwargs)


def test_clean_files_build_the_panel(tmp_path):
    panel, report = build(write(tmp_path))
    assert panel["sales"].tolist() == [2, 1]
    assert report["duplicate_orders_dropped"] == report["duplicate_items_dropped"] == 0


def test_missing_file(tmp_path):
    write(tmp_path)
    os.remove(tmp_path / synthetic.ITEMS_FILE)
    with pytest.raises(FileNotFoundError, match=r"olist_order_items_dataset\.csv: Olist CSV not"):
        build(tmp_path)


@pytest.mark.parametrize("content", ["", "order_id,order_item_id,product_id,price\n"])
def test_empty_file(tmp_path, content):
    write(tmp_path)
    (tmp_path / synthetic.ITEMS_FILE).write_text(content)
    with pytest.raises(ValueError, match=r"olist_order_items_dataset\.csv: the file .*'order_id'"):
        build(tmp_path)


def test_truncated_file_names_the_file_and_the_missing_column(tmp_path):
    write(tmp_path)
    path = tmp_path / synthetic.ORDERS_FILE
    text = path.read_text()
    path.write_text(text[: text.rindex("2017-01-02")])  # cut inside the last purchase time
    with pytest.raises(
        ValueError,
        match=r"olist_orders_dataset\.csv: not a complete CSV.*stops at column "
        r"'order_purchase_timestamp'",
    ):
        build(tmp_path)


def test_missing_column(tmp_path):
    write(tmp_path)
    (tmp_path / synthetic.ITEMS_FILE).write_text("order_id,order_item_id,product_id\no1,1,A\n")
    with pytest.raises(ValueError, match=r"olist_order_items_dataset\.csv: missing .*'price'"):
        build(tmp_path)


@pytest.mark.parametrize("price", ["ten", "-1.00", "inf", ""])
def test_bad_price(tmp_path, price):
    items = ITEMS[:2] + [ITEMS[2][:5] + (price, "1.00")]
    write(tmp_path, items=items)
    with pytest.raises(
        ValueError,
        match=rf"olist_order_items_dataset\.csv: column 'price', record 3 .*{price!r}.*>= 0",
    ):
        build(tmp_path)


def test_unparsable_purchase_timestamp(tmp_path):
    orders = [ORDERS[0], ORDERS[1][:3] + ("2017-13-45 10:00:00",) + ORDERS[1][4:]]
    write(tmp_path, orders=orders)
    with pytest.raises(
        ValueError,
        match=r"olist_orders_dataset\.csv: column 'order_purchase_timestamp', record 2 .*"
        r"'2017-13-45 10:00:00'",
    ):
        build(tmp_path)


def test_items_of_an_unknown_order(tmp_path):
    items = ITEMS + [("o9", 1, "A", "s", "2017-01-10 00:00:00", "1.00", "1.00")] * 2
    items[-1] = ("o9", 2) + items[-1][2:]
    write(tmp_path, items=items)
    with pytest.raises(
        ValueError,
        match=r"olist_order_items_dataset\.csv: column 'order_id': 2 item record\(s\).*"
        r"olist_orders_dataset\.csv.*'o9'",
    ):
        build(tmp_path)


def test_duplicated_orders_are_an_error_or_dropped_and_counted(tmp_path, caplog):
    # The case: a repeated order row joins its items twice and doubles their units.
    write(tmp_path, orders=ORDERS + [ORDERS[0]])
    with pytest.raises(
        ValueError, match=r"olist_orders_dataset\.csv: 1 record\(s\) repeat .*'order_id'.*'o1'"
    ):
        build(tmp_path)
    panel, report = build(tmp_path, on_duplicate="drop_later")
    assert panel["sales"].tolist() == [2, 1]  # as from the files without the repeat
    assert report["duplicate_orders_dropped"] == 1
    assert "olist_orders_dataset.csv: dropped 1 record(s)" in caplog.text


def test_duplicated_items_are_an_error_or_dropped_and_counted(tmp_path, caplog):
    write(tmp_path, items=ITEMS + [ITEMS[1], ITEMS[1]])
    with pytest.raises(
        ValueError,
        match=r"olist_order_items_dataset\.csv: 2 record\(s\) repeat .*'order_item_id'.*"
        r"record 4",
    ):
        build(tmp_path)
    panel, report = build(tmp_path, on_duplicate="drop_later")
    assert panel["sales"].tolist() == [2, 1]
    assert report["duplicate_items_dropped"] == 2
    assert "olist_order_items_dataset.csv: dropped 2 record(s)" in caplog.text
    with pytest.raises(ValueError, match="on_duplicate='keep'.*drop_later"):
        build(tmp_path, on_duplicate="keep")


def test_prepare_passes_the_duplicate_policy(tmp_path):
    config = sales_config.get_config("tiny")
    assert config.data.on_duplicate == "error"
    config.data.synthetic = False
    config.data.min_sales = 1
    config.data.csv_dir = write(tmp_path, orders=ORDERS + [ORDERS[1]])
    with pytest.raises(ValueError, match=r"olist_orders_dataset\.csv: 1 record\(s\) repeat"):
        data.prepare(config, str(tmp_path / "work"))
    config.data.on_duplicate = "drop_later"
    panel = data.read_panel(data.prepare(config, str(tmp_path / "work")))
    assert panel["sales"].tolist() == [2, 1]
