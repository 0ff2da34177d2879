"""Olist CSVs -> the sales task's product-day panel (parquet).

  python scripts/prepare_sales.py --csv_dir=/data/olist --out=/data/olist/panel.parquet \
      [--min_sales=50] [--exclude_statuses=canceled,unavailable]

Reads olist_orders_dataset.csv, olist_order_items_dataset.csv and olist_order_reviews_dataset.csv
(see jaxlab/sales/README.md), joins them into one row per product and day (every day of each
product's range, zero-filled), drops products with fewer than --min_sales units and reports how
many were dropped. Train with --config.data.panel_path=<out>.
"""

import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from absl import app, flags, logging  # noqa: E402

from jaxlab.sales import data  # noqa: E402

_CSV_DIR = flags.DEFINE_string("csv_dir", None, "Folder holding the Olist CSVs.")
_OUT = flags.DEFINE_string("out", None, "Panel parquet to write.")
_MIN_SALES = flags.DEFINE_integer("min_sales", 50, "Keep products with at least this many units.")
_EXCLUDE = flags.DEFINE_list(
    "exclude_statuses", ["canceled", "unavailable"], "Order statuses not counted as sales."
)
flags.mark_flags_as_required(["csv_dir", "out"])


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    try:
        panel, report = data.build_panel(
            _CSV_DIR.value, min_sales=_MIN_SALES.value, exclude_statuses=tuple(_EXCLUDE.value)
        )
    except (FileNotFoundError, ValueError) as e:
        sys.exit(f"prepare_sales: {e}")
    data.write_panel(panel, _OUT.value)
    logging.info("Report: %s", report)
    print(
        f"Wrote {_OUT.value}: {report['products_kept']} products kept, "
        f"{report['products_below_min_sales']} below --min_sales={_MIN_SALES.value} excluded, "
        f"{report['panel_rows']} product-days, {report['orders_kept']}/{report['orders']} orders."
    )


if __name__ == "__main__":
    app.run(main)
