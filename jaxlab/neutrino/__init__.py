"""IceCube neutrino direction: hierarchical transformer over packed pulses -> DOMs -> event.

A re-implementation of iceaggr: `data.py` reads the Kaggle parquet layout, `data_packing.py` groups
pulses by DOM and packs events into fixed-shape blocks, `data_pipeline.py` the grain pipelines,
`model.py` the two-level transformer, `losses.py` angular / vMF losses, `metrics.py` the
competition metric, `steps.py` the parts and pure steps, `train.py` the loop, `evaluate.py`
metrics, submission CSV and plots from a checkpoint. The binaries import the modules by name;
this file re-exports nothing.
"""
