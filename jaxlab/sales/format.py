"""File-format facts of the Olist Brazilian e-commerce export, shared by the reader (`data.py`)
and the demo-data writer (`synthetic.py`): the four CSVs the panel is built from, their exact
headers (the "lenght" misspellings included) and the timestamp format.
"""

from __future__ import annotations

ORDERS_FILE = "olist_orders_dataset.csv"
ITEMS_FILE = "olist_order_items_dataset.csv"
REVIEWS_FILE = "olist_order_reviews_dataset.csv"
PRODUCTS_FILE = "olist_products_dataset.csv"

ORDERS_HEADER = (
    "order_id",
    "customer_id",
    "order_status",
    "order_purchase_timestamp",
    "order_approved_at",
    "order_delivered_carrier_date",
    "order_delivered_customer_date",
    "order_estimated_delivery_date",
)
ITEMS_HEADER = (
    "order_id",
    "order_item_id",
    "product_id",
    "seller_id",
    "shipping_limit_date",
    "price",
    "freight_value",
)
REVIEWS_HEADER = (
    "review_id",
    "order_id",
    "review_score",
    "review_comment_title",
    "review_comment_message",
    "review_creation_date",
    "review_answer_timestamp",
)
PRODUCTS_HEADER = (
    "product_id",
    "product_category_name",
    "product_name_lenght",
    "product_description_lenght",
    "product_photos_qty",
    "product_weight_g",
    "product_length_cm",
    "product_height_cm",
    "product_width_cm",
)

TIME_FORMAT = "%Y-%m-%d %H:%M:%S"
