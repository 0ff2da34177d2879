"""Olist sales: conditional WGAN-GP sequence generator, LSTM forecaster, augmentation study.

`train.train_and_evaluate` trains the GAN, generates sequences for the training windows and trains
the forecasters on real / augmented / generated-only data; `evaluate.evaluate` restores them from
checkpoints and writes the comparison table, the synthetic-data quality scores and figures. The
binaries import the modules by name; this file re-exports nothing.
"""
