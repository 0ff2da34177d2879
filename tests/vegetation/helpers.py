"""Small synthetic cubes for the vegetation tests."""

from __future__ import annotations

import os

import numpy as np
import pandas as pd

from jaxlab.configs import vegetation as vegetation_config
from jaxlab.vegetation import synthetic


def tiny_config():
    return vegetation_config.get_config("tiny")


def write_cube(root: str, ds, track: str = "train", region: str = "32UNC", name: str = "c.nc"):
    path = os.path.join(root, track, region, name)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    ds.to_netcdf(path, engine="h5netcdf")
    return path


def cube(size: int = 16, seed: int = 0):
    rng = np.random.default_rng(seed)
    return synthetic.make_cube(rng, size, pd.Timestamp(2019, 4, 1))
