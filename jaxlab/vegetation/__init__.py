"""GreenEarthNet vegetation forecasting: ConvLSTM encoder + Fourier decoder on reflectance deltas.

`data.py` reads the minicubes (BAP composite, weather anomalies, land cover), `model.py` the
network, `losses.py` the masked log-cosh loss, `metrics.py` the official NDVI scores,
`train.py` the loop, `evaluate.py` scoring from a checkpoint with predictions in the official
layout. See README.md beside this file.
"""

from jaxlab.vegetation.evaluate import evaluate
from jaxlab.vegetation.train import benchmark_setup, train_and_evaluate

__all__ = ["benchmark_setup", "evaluate", "train_and_evaluate"]
