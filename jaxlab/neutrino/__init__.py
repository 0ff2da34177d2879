"""IceCube neutrino direction: hierarchical transformer over packed pulses -> DOMs -> event.

A re-implementation of iceaggr: `data.py` reads the Kaggle parquet layout and packs events into
fixed-shape batches, `model.py` the two-level transformer, `losses.py` angular / vMF losses,
`metrics.py` the competition metric, `train.py` the loop, `evaluate.py` metrics, submission CSV
and plots from a checkpoint.
"""

from jaxlab.neutrino.evaluate import evaluate
from jaxlab.neutrino.train import benchmark_setup, train_and_evaluate

__all__ = ["benchmark_setup", "evaluate", "train_and_evaluate"]
