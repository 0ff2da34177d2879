"""The core's own tiny task: regression on planted signal, wired exactly like the five tasks.

It exists to drive (and test) the shared core end to end, and as the shortest example of the task
pattern: `synthetic.py` writes files, `data.py` reads them, `model.py`, `train.py` with its explicit
loop, `evaluate.py` restoring a checkpoint.
"""

from jaxlab.example.evaluate import evaluate
from jaxlab.example.train import benchmark_setup, train_and_evaluate

__all__ = ["benchmark_setup", "evaluate", "train_and_evaluate"]
