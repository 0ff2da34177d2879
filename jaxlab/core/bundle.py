"""Reading and writing the parameter file of an exported bundle (see `jaxlab/export.py`).

Kept in core, apart from the exporter, so `restore.restore_for_eval` can evaluate a bundle
(`config.eval.model`) without importing task code.
"""

from __future__ import annotations

import json
import os
from typing import Any

import jax
import numpy as np
from safetensors import numpy as safetensors_np

from jaxlab.core import config as config_lib

PARAMS_FILE = "params.safetensors"
CONFIG_FILE = config_lib.CONFIG_FILE
INFO_FILE = "bundle.json"


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


def flatten_params(params: Any) -> dict[str, np.ndarray]:
    """{"a/b/kernel": array} for every leaf of a nested-dict parameter tree."""
    flat = {}
    for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
        name = "/".join(str(getattr(k, "key", getattr(k, "idx", k))) for k in path)
        flat[name] = np.asarray(jax.device_get(leaf))
    return flat


def unflatten_params(flat: dict[str, np.ndarray], abstract: Any, source: str) -> Any:
    """The tree of `abstract` (ShapeDtypeStructs) filled from `flat`, checked leaf by leaf.

    Raises one ValueError naming the first missing, unexpected or mis-shaped parameter.
    """
    expected = flatten_params(jax.tree.map(lambda x: np.zeros((), x.dtype), abstract))
    names = list(expected)
    shapes = {
        name: leaf.shape
        for name, leaf in zip(names, jax.tree.leaves(abstract), strict=True)  # same order
    }
    missing = [n for n in names if n not in flat]
    unexpected = [n for n in flat if n not in shapes]
    if missing or unexpected:
        raise ValueError(
            f"{source}: parameters do not match the config's model: missing {missing[:3]}, "
            f"unexpected {unexpected[:3]} ({len(missing)} missing, {len(unexpected)} unexpected)."
        )
    for name in names:
        if flat[name].shape != tuple(shapes[name]) or flat[name].dtype != expected[name].dtype:
            raise ValueError(
                f"{source}: parameter {name!r} is {flat[name].dtype}{list(flat[name].shape)}; "
                f"the config's model expects {expected[name].dtype}{list(shapes[name])}."
            )
    treedef = jax.tree.structure(abstract)
    return jax.tree.unflatten(treedef, [flat[n] for n in names])


def read_params(path: str, abstract: Any) -> Any:
    """The bundle's inference parameters, shaped like `abstract` (checked)."""
    file = os.path.join(path, PARAMS_FILE)
    if not os.path.isfile(file):
        raise FileNotFoundError(f"{file}: the bundle has no parameter file.")
    return unflatten_params(safetensors_np.load_file(file), abstract, file)


def write_params(path: str, params: Any, metadata: dict[str, str]) -> dict[str, np.ndarray]:
    """Writes `params` to the bundle's parameter file; returns the flat dict written."""
    flat = flatten_params(params)
    safetensors_np.save_file(flat, os.path.join(path, PARAMS_FILE), metadata=metadata)
    return flat
