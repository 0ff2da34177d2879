"""Olist sales: conditional WGAN-GP sequence generator, LSTM forecaster, augmentation study.

`train_and_evaluate` trains the GAN, generates sequences for the training windows and trains the
forecasters on real / augmented / generated-only data; `evaluate` restores them from checkpoints
and writes the comparison table, the synthetic-data quality scores and figures.
"""

from jaxlab.sales.evaluate import evaluate
from jaxlab.sales.train import benchmark_setup, train_and_evaluate

__all__ = ["benchmark_setup", "evaluate", "train_and_evaluate"]
