"""Reader of the example task's `regression_<split>.npz` files (x [N, F] float32, y [N] float32)."""

from __future__ import annotations

import os

import ml_collections
import numpy as np

from jaxlab.example import synthetic
from jaxlab.example.format import ARRAYS, split_path


class RegressionSource:
    """Random-access records {"x": [F] float32, "y": [] float32, "index": [] int32}."""

    def __init__(self, path: str):
        if not os.path.exists(path):
            raise FileNotFoundError(f"{path}: no such file (write it with example.synthetic).")
        with np.load(path) as f:
            for name in ARRAYS:
                if name not in f:
                    raise ValueError(f"{path}: missing array {name!r}; found {sorted(f.files)}.")
            self.x = np.asarray(f["x"], np.float32)
            self.y = np.asarray(f["y"], np.float32)
        if self.x.ndim != 2 or self.y.shape != (self.x.shape[0],):
            raise ValueError(
                f"{path}: expected x [N, F] and y [N], got x {self.x.shape}, y {self.y.shape}."
            )
        for name, values in (("x", self.x), ("y", self.y)):
            if not np.isfinite(values).all():
                raise ValueError(f"{path}: array {name!r} holds NaN or Inf values.")

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int) -> dict[str, np.ndarray]:
        return {"x": self.x[i], "y": self.y[i], "index": np.int32(i)}

    @property
    def num_features(self) -> int:
        return self.x.shape[1]


def load(directory: str, split: str, num_features: int | None = None) -> RegressionSource:
    """The split's records; with `num_features`, checks the file has that many columns."""
    source = RegressionSource(split_path(directory, split))
    if num_features is not None and source.num_features != num_features:
        raise ValueError(
            f"{split_path(directory, split)}: x has {source.num_features} features; "
            f"config.data.num_features is {num_features}."
        )
    return source


def prepare(config: ml_collections.ConfigDict, workdir: str) -> str:
    """The data directory, after writing the synthetic dataset there when configured."""
    data_dir = config.data.dir or os.path.join(workdir, "data")
    if config.data.synthetic:
        synthetic.write_dataset(
            data_dir,
            num_train=config.data.num_train,
            num_eval=config.data.num_eval,
            num_features=config.data.num_features,
            seed=config.seed,
        )
    return data_dir
