"""`python scripts/benchmark.py [flags]` is `jaxlab bench [flags]`, from a source checkout.

See `jaxlab bench --help` (jaxlab/cli.py).
"""

import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))  # without an install

from jaxlab import cli  # noqa: E402

if __name__ == "__main__":
    cli.main(["jaxlab", "bench", *sys.argv[1:]])
