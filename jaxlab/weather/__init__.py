"""HRRR convection forecasts: conditional DDPM on GRIB2 -> Zarr data, DPM-Solver++ ensembles.

`synthetic.py` writes real GRIB2 files, `data.py` reads them with cfgrib into a Zarr store,
`diffusion.py` holds the schedules and samplers as pure functions, `model.py` the U-Nets,
`train.py` the explicit loop, `ensemble.py` / `evaluate.py` the ensembles, scores and products.
"""

from jaxlab.weather.ensemble import benchmark_sampling
from jaxlab.weather.evaluate import evaluate
from jaxlab.weather.train import benchmark_setup, train_and_evaluate

__all__ = ["benchmark_sampling", "benchmark_setup", "evaluate", "train_and_evaluate"]
