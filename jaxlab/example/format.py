"""File-format facts of the example task, shared by the reader (`data.py`) and the writer
(`synthetic.py`): one `regression_<split>.npz` per split holding x [N, F] and y [N], float32."""

from __future__ import annotations

import os

ARRAYS = ("x", "y")


def split_path(directory: str, split: str) -> str:
    return os.path.join(directory, f"regression_{split}.npz")
