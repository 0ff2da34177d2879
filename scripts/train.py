"""`python scripts/train.py [flags]` is `jaxlab train [flags]`, from a source checkout.

See `jaxlab train --help` (jaxlab/cli/commands.py).
"""

import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))  # without an install

from jaxlab.cli.commands import main  # noqa: E402

if __name__ == "__main__":
    main(["jaxlab", "train", *sys.argv[1:]])
