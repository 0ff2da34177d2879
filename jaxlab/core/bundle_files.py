"""What a bundle folder is made of: its file names and its description, `bundle.json`.

Apart from `bundle` (export, load, a bundle back into a state) so that `portable` (the
bundle's StableHLO predict, which `bundle.export_bundle` writes) reads a bundle without
importing the exporter: neither imports the other's caller.
"""

from __future__ import annotations

import json
import os
from typing import Any

from jaxlab.core import config as config_lib

PARAMS_FILE = "params.safetensors"
CONFIG_FILE = config_lib.CONFIG_FILE
INFO_FILE = "bundle.json"
CARD_FILE = "model_card.md"


def is_bundle(path: str) -> bool:
    return os.path.isfile(os.path.join(path, INFO_FILE))


def read_info(path: str) -> dict[str, Any]:
    """`bundle.json`: task, checkpoint step, metrics, provenance."""
    file = os.path.join(path, INFO_FILE)
    try:
        with open(file) as f:
            return json.load(f)
    except (OSError, ValueError) as e:
        raise ValueError(f"{file}: not a readable jaxlab bundle description ({e}).") from e
