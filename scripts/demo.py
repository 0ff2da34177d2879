"""`python scripts/demo.py [flags]` is `jaxlab demo [flags]`, from a source checkout.

See `jaxlab demo --help` (jaxlab/cli/commands.py).
"""

import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))  # without an install

from jaxlab.cli.commands import main  # noqa: E402

if __name__ == "__main__":
    main(["jaxlab", "demo", *sys.argv[1:]])
