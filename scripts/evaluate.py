"""`python scripts/evaluate.py [flags]` is `jaxlab evaluate [flags]`, from a source checkout.

See `jaxlab evaluate --help` (jaxlab/cli.py).
"""

import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))  # without an install

from jaxlab import cli  # noqa: E402

if __name__ == "__main__":
    cli.main(["jaxlab", "evaluate", *sys.argv[1:]])
