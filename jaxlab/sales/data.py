"""Olist CSVs -> product-day panel (parquet): the reader of the real on-disk format.

Stages, each a function a test can drive on a hand-made order set:

1. `read_csv`: one Olist CSV through `pyarrow.csv` (quoted newlines allowed), only the columns
   needed, timestamps, integers and prices parsed here with one clear error naming the file, the
   column, the record and the bad value (also for a missing, empty or truncated file); repeated
   orders / item rows are an error or, with data.on_duplicate="drop_later", dropped and counted.
2. `build_panel`: orders (purchase day, status) x items (one row = one unit sold) x reviews (score,
   dated by the day the review was written, so a feature never uses a review before it existed)
   -> one row per product and day, every day of a product's range (first to last sale) filled with
   zero sales; products with fewer than `min_sales` units are dropped (and counted).

`prepare(config, workdir)` writes the synthetic CSVs (when `config.data.synthetic`) and the panel.
Features, splits and forecasting windows of the panel are in `data_windows.py`.
"""

from __future__ import annotations

import csv
import os
import re
from collections.abc import Sequence

import ml_collections
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
from absl import logging

from jaxlab.data import ownership
from jaxlab.sales import synthetic
from jaxlab.sales.format import ITEMS_FILE, ORDERS_FILE, REVIEWS_FILE, TIME_FORMAT

PANEL_COLUMNS = ("product_id", "date", "sales", "review_count", "review_score_mean")
# Key columns a record may hold once. Olist's item key is (order_id, order_item_id); product_id is
# part of it here so that two products under one order_item_id (hand-made sets) stay two sales.
ORDER_KEY = ("order_id",)
ITEM_KEY = ("order_id", "order_item_id")  # Olist: an item is its order and its number there


# ----------------------------------------------------------------------------------------------
# 1. CSV reading.


def read_csv(path: str, columns: dict[str, str]) -> pd.DataFrame:
    """Reads `columns` ({name: "string" | "timestamp" | "int" | "price"}) of one Olist CSV.

    Timestamps must be "YYYY-MM-DD HH:MM:SS" and non-empty; ints must be integers; prices finite
    numbers >= 0. A missing, empty (no header or no record) or truncated file, a missing column
    and any other value raise one error naming the file and the column (and the record number and
    value where one is at fault).
    """
    if not os.path.exists(path):
        raise FileNotFoundError(
            f"{path}: Olist CSV not found. Download the Olist dataset (Kaggle 'olistbr/"
            "brazilian-ecommerce') and point config.data.csv_dir at the folder holding it."
        )
    with open(path, newline="", encoding="utf-8-sig") as f:
        header = next(csv.reader(f), [])
    if not header:
        raise ValueError(
            f"{path}: the file is empty (no header row); expected an Olist CSV with column(s) "
            f"{list(columns)}."
        )
    missing = [name for name in columns if name not in header]
    if missing:
        raise ValueError(f"{path}: missing column(s) {missing}; the header has {header}.")
    try:
        table = pacsv.read_csv(
            path,
            parse_options=pacsv.ParseOptions(newlines_in_values=True),
            convert_options=pacsv.ConvertOptions(
                include_columns=list(columns),
                column_types={name: pa.string() for name in columns},
                strings_can_be_null=False,
            ),
        )
    except pa.ArrowInvalid as e:
        raise ValueError(_parse_error(path, header, e)) from e
    if table.num_rows == 0:
        raise ValueError(
            f"{path}: the file has a header but no record; expected rows with column(s) "
            f"{list(columns)}."
        )
    frame = table.to_pandas()
    for name, kind in columns.items():
        if kind == "timestamp":
            frame[name] = _parse(path, name, frame[name], _to_timestamp, "a 'YYYY-MM-DD HH:MM:SS'")
        elif kind == "int":
            frame[name] = _parse(path, name, frame[name], _to_int, "an integer")
        elif kind == "price":
            frame[name] = _parse(path, name, frame[name], _to_price, "a finite number >= 0")
        elif kind != "string":
            raise ValueError(f"read_csv: unknown column kind {kind!r} for {name!r}.")
    return frame


def _parse_error(path: str, header: list[str], error: Exception) -> str:
    """pyarrow's parse error with the file and the first column a short record lacks."""
    message = str(error).splitlines()[0]
    got = re.search(r"Expected \d+ columns, got (\d+)", message)
    where = ""
    if got and 0 < int(got.group(1)) < len(header):
        n = int(got.group(1))
        where = (
            f" a record holds {n} of {len(header)} columns (it stops at column "
            f"{header[n - 1]!r}; {header[n]!r} and later are missing);"
        )
    return (
        f"{path}: not a complete CSV (truncated download or broken quoting?):{where} pyarrow "
        f"says: {message}"
    )


def _to_timestamp(values: pd.Series) -> pd.Series:
    return pd.to_datetime(values, format=TIME_FORMAT, errors="coerce")


def _to_int(values: pd.Series) -> pd.Series:
    numbers = pd.to_numeric(values, errors="coerce")
    return numbers.where(numbers == np.round(numbers))


def _to_price(values: pd.Series) -> pd.Series:
    numbers = pd.to_numeric(values, errors="coerce").astype(np.float64)
    return numbers.where(np.isfinite(numbers) & (numbers >= 0))


def _parse(path: str, name: str, values: pd.Series, parse, expected: str) -> pd.Series:
    parsed = parse(values)
    bad = np.flatnonzero(parsed.isna().to_numpy())
    if len(bad):
        i = int(bad[0])
        raise ValueError(
            f"{path}: column {name!r}, record {i + 1} (of {len(values)}): value {values.iloc[i]!r}"
            f" is not {expected} ({len(bad)} bad value(s) in this column)."
        )
    if parse is _to_price:
        return parsed
    return parsed.astype(np.int64) if parsed.dtype.kind == "f" else parsed


ON_DUPLICATE = ("error", "drop_later")


def drop_duplicates(
    frame: pd.DataFrame, path: str, keys: Sequence[str], on_duplicate: str
) -> tuple[pd.DataFrame, int]:
    """(frame without later rows repeating an earlier row's `keys`, number of rows dropped).

    on_duplicate "error" (default): a repeated key is one error naming the file, the key columns,
    the count and the first repeated record; "drop_later": the first row is kept and the count is
    logged (and returned for the report).
    """
    if on_duplicate not in ON_DUPLICATE:
        raise ValueError(
            f"config.data.on_duplicate={on_duplicate!r}: expected one of {ON_DUPLICATE}."
        )
    repeated = frame.duplicated(subset=list(keys), keep="first").to_numpy()
    count = int(repeated.sum())
    if count == 0:
        return frame, 0
    i = int(np.flatnonzero(repeated)[0])
    example = {k: frame[k].iloc[i] for k in keys}
    if on_duplicate == "error":
        raise ValueError(
            f"{path}: {count} record(s) repeat the key column(s) {list(keys)} of an earlier one "
            f"(first: record {i + 1}, {example}); each key must appear once. Set "
            "config.data.on_duplicate='drop_later' to keep the first and drop the repeats."
        )
    logging.warning(
        "%s: dropped %d record(s) repeating the key column(s) %s of an earlier one (first: record "
        "%d, %s); data.on_duplicate='drop_later' keeps the first.",
        path,
        count,
        list(keys),
        i + 1,
        example,
    )
    return frame[~repeated].reset_index(drop=True), count


# ----------------------------------------------------------------------------------------------
# 2. The product-day panel.


def build_panel(
    csv_dir: str,
    *,
    min_sales: int,
    exclude_statuses: Sequence[str] = ("canceled", "unavailable"),
    on_duplicate: str = "error",
) -> tuple[pd.DataFrame, dict[str, int]]:
    """The product-day panel (columns `PANEL_COLUMNS`) and a report of what was kept/dropped.

    sales: item rows of the product in orders bought that day (status not excluded).
    review_count / review_score_mean: reviews written that day of orders holding the product
    (mean 0 where count is 0).

    A repeated order (`ORDER_KEY`) or item row (`ITEM_KEY`) would count its units twice: an error,
    or with on_duplicate="drop_later" the first is kept and the repeats are counted in the report.
    Item rows of an order absent from the orders file are an error (their day is unknown).
    """
    orders_path = os.path.join(csv_dir, ORDERS_FILE)
    items_path = os.path.join(csv_dir, ITEMS_FILE)
    orders = read_csv(
        orders_path,
        {"order_id": "string", "order_status": "string", "order_purchase_timestamp": "timestamp"},
    )
    items = read_csv(
        items_path,
        {"order_id": "string", "order_item_id": "int", "product_id": "string", "price": "price"},
    )
    orders, duplicate_orders = drop_duplicates(orders, orders_path, ORDER_KEY, on_duplicate)
    items, duplicate_items = drop_duplicates(items, items_path, ITEM_KEY, on_duplicate)
    orphans = ~items["order_id"].isin(orders["order_id"])
    if orphans.any():
        raise ValueError(
            f"{items_path}: column 'order_id': {int(orphans.sum())} item record(s) name an order "
            f"that {orders_path} does not hold (first: {items['order_id'][orphans].iloc[0]!r}); "
            "the two files must come from the same Olist download."
        )
    reviews = read_csv(
        os.path.join(csv_dir, REVIEWS_FILE),
        {"order_id": "string", "review_score": "int", "review_creation_date": "timestamp"},
    )
    bad_score = ~reviews["review_score"].between(1, 5)
    if bad_score.any():
        value = reviews["review_score"][bad_score].iloc[0]
        raise ValueError(
            f"{os.path.join(csv_dir, REVIEWS_FILE)}: column 'review_score' holds "
            f"{value}; expected 1..5."
        )

    kept_orders = orders[~orders["order_status"].isin(list(exclude_statuses))]
    kept_orders = kept_orders.assign(date=kept_orders["order_purchase_timestamp"].dt.floor("D"))
    sold = items.merge(kept_orders[["order_id", "date"]], on="order_id", how="inner")
    sales = sold.groupby(["product_id", "date"]).size().rename("sales")
    totals = sales.groupby(level="product_id").sum()
    keep = totals.index[totals >= min_sales]
    report = {
        "orders": len(orders),
        "orders_kept": len(kept_orders),
        "items": len(items),
        "products_sold": len(totals),
        "products_kept": len(keep),
        "products_below_min_sales": int((totals < min_sales).sum()),
        "reviews": len(reviews),
        "duplicate_orders_dropped": duplicate_orders,
        "duplicate_items_dropped": duplicate_items,
    }

    # Reviews -> products of the reviewed order, dated by the day the review was written.
    order_products = sold[["order_id", "product_id"]].drop_duplicates()
    scored = reviews.merge(order_products, on="order_id", how="inner")
    scored = scored.assign(date=scored["review_creation_date"].dt.floor("D"))
    review_stats = scored.groupby(["product_id", "date"])["review_score"].agg(["count", "mean"])

    frames = []
    for product in sorted(keep):
        product_sales = sales.loc[product]
        days = pd.date_range(product_sales.index.min(), product_sales.index.max(), freq="D")
        frame = pd.DataFrame({"date": days})
        frame["sales"] = product_sales.reindex(days, fill_value=0).to_numpy()
        if product in review_stats.index.get_level_values(0):
            stats = review_stats.loc[product].reindex(days)
            frame["review_count"] = stats["count"].fillna(0).to_numpy()
            frame["review_score_mean"] = stats["mean"].fillna(0.0).to_numpy()
        else:
            frame["review_count"] = 0
            frame["review_score_mean"] = 0.0
        frame.insert(0, "product_id", product)
        frames.append(frame)
    if not frames:
        raise ValueError(
            f"{csv_dir}: no product has at least data.min_sales = {min_sales} units sold; "
            f"lower it (products sold: {len(totals)}, most units: {int(totals.max() or 0)})."
        )
    panel = pd.concat(frames, ignore_index=True)
    panel = panel.astype(
        {"sales": np.int32, "review_count": np.int32, "review_score_mean": np.float32}
    )
    report["panel_rows"] = len(panel)
    return panel, report


def write_panel(panel: pd.DataFrame, path: str) -> None:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    table = pa.Table.from_pandas(panel[list(PANEL_COLUMNS)], preserve_index=False)
    table = table.set_column(1, "date", table.column("date").cast(pa.date32()))
    tmp = f"{path}.{os.getpid()}.tmp"
    pq.write_table(table, tmp)
    os.replace(tmp, path)


def read_panel(path: str) -> pd.DataFrame:
    """The panel parquet, checked: columns present, counts >= 0, one row per contiguous day."""
    if not os.path.exists(path):
        raise FileNotFoundError(
            f"{path}: panel parquet not found; build it with scripts/prepare_sales.py."
        )
    table = pq.read_table(path)
    missing = [c for c in PANEL_COLUMNS if c not in table.column_names]
    if missing:
        raise ValueError(f"{path}: missing column(s) {missing}; has {table.column_names}.")
    panel = table.select(list(PANEL_COLUMNS)).to_pandas()
    panel["date"] = pd.to_datetime(panel["date"])
    for name in ("sales", "review_count"):
        if (panel[name] < 0).any() or panel[name].isna().any():
            raise ValueError(f"{path}: column {name!r} must be non-negative counts.")
    if not panel["review_score_mean"].between(0.0, 5.0).all():
        raise ValueError(f"{path}: column 'review_score_mean' must lie in [0, 5] (0 = no review).")
    steps = panel.groupby("product_id", sort=False)["date"].diff().dropna()
    if (steps != pd.Timedelta(days=1)).any():
        raise ValueError(f"{path}: each product's rows must be consecutive days in order.")
    return panel


def find_olist_dir(root: str, max_depth: int = 3) -> str | None:
    """The first folder under `root` (depth <= max_depth, sorted) holding the orders CSV.

    On Kaggle, a dataset added to a notebook appears as /kaggle/input/<slug>/ (sometimes one
    level deeper), so the Olist CSVs are found without knowing the slug.
    """
    if not root or not os.path.isdir(root):
        return None
    root = os.path.abspath(root)
    for directory, subdirs, files in sorted(os.walk(root)):
        subdirs.sort()
        if directory[len(root) :].count(os.sep) >= max_depth:
            subdirs.clear()
        if ORDERS_FILE in files:
            return directory
    return None


def prepare(config: ml_collections.ConfigDict, workdir: str) -> str:
    """The panel path, after writing the synthetic CSVs and building the panel when missing.

    Synthetic data goes to `<workdir>/data/olist` (claimed with `ownership.claim_synthetic_dir`,
    so a user's folder is never written into); real data needs `config.data.panel_path` (a panel
    from scripts/prepare_sales.py) or `config.data.csv_dir` (the Olist CSVs); when both are
    empty, the Olist folder is looked for under `config.data.kaggle_input` (a Kaggle notebook's
    /kaggle/input). The panel is written to `<workdir>/data/panel.parquet` by default.
    """
    dc = config.data
    data_dir = os.path.join(workdir, "data")
    csv_dir = dc.csv_dir
    if not dc.synthetic and not dc.panel_path and not csv_dir:
        csv_dir = find_olist_dir(dc.get("kaggle_input", ""))
        if csv_dir is None:
            raise ValueError(
                "config.data.synthetic is False, so set config.data.panel_path (a panel parquet "
                "from scripts/prepare_sales.py) or config.data.csv_dir (the folder of the Olist "
                f"CSVs); no {ORDERS_FILE} was found under config.data.kaggle_input "
                f"({dc.get('kaggle_input', '')!r})."
            )
        logging.info("Olist CSVs found under %s: %s", dc.kaggle_input, csv_dir)
    panel_path = dc.panel_path or os.path.join(data_dir, "panel.parquet")
    if dc.synthetic:
        if not csv_dir:
            csv_dir = os.path.join(
                ownership.claim_synthetic_dir(data_dir, key="data.csv_dir"), "olist"
            )
        else:
            csv_dir = ownership.claim_synthetic_dir(csv_dir, key="data.csv_dir")
        synthetic.write_dataset(
            csv_dir, num_products=dc.num_products, num_days=dc.num_days, seed=config.seed
        )
    if not os.path.exists(panel_path):
        panel, report = build_panel(
            csv_dir,
            min_sales=dc.min_sales,
            exclude_statuses=tuple(dc.exclude_statuses),
            on_duplicate=dc.get("on_duplicate", "error"),
        )
        logging.info("Panel from %s: %s", csv_dir, report)
        write_panel(panel, panel_path)
    return panel_path
