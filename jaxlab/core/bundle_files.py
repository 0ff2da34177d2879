"""What a bundle folder is made of: its file names and its description, `bundle.json`.

Apart from `bundle` (export, load, a bundle back into a state) so that `portable` (the
bundle's StableHLO predict, which `bundle.export_bundle` writes) reads a bundle without
importing the exporter: neither imports the other's caller.
"""

from __future__ import annotations

import json
import os
from typing import Any

import ml_collections

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


def read_config(path: str) -> ml_collections.ConfigDict:
    """The resolved config saved in a bundle or a workdir (`config.json`)."""
    file = os.path.join(path, CONFIG_FILE)
    if not os.path.isfile(file):
        raise FileNotFoundError(
            f"{path} has no {CONFIG_FILE}: it is neither a jaxlab bundle nor a workdir of a run "
            "that recorded its config; pass --config as at training time."
        )
    with open(file) as f:
        return ml_collections.ConfigDict(json.load(f))
