"""GravityViT: Gravity Spy glitch classification with a multi-view ViT and cross-attention fusion.

`data.py` reads the published HDF5 (and the PNG tarball), `synthetic.py` writes the same layout
with planted morphologies, `model.py` holds the timm-identical ViT, the fusion and the CNN
baseline, `timm_import.py` maps timm state dicts, `train.py` the epoch loop, `evaluate.py` the
checkpoint evaluation.
"""

from jaxlab.glitch.evaluate import evaluate
from jaxlab.glitch.train import benchmark_setup, train_and_evaluate

__all__ = ["benchmark_setup", "evaluate", "train_and_evaluate"]
