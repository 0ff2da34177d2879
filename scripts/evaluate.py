"""Evaluates a trained task from its workdir's checkpoint (best by default).

`python scripts/evaluate.py --config=glitch:demo --workdir=runs/glitch`
writes metrics.json, data products and PNG figures under `<workdir>/eval/<split>/`. Choose the
checkpoint with `--config.eval.checkpoint=latest|best|<step>` and the split with
`--config.eval.split=...`. Any device count works: the checkpoint is resharded on restore.
"""

import json
import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))  # for jaxlab/configs/

from absl import app, flags, logging  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from jaxlab.core import loop  # noqa: E402
from jaxlab.core import mesh as mesh_lib  # noqa: E402
from jaxlab.core.task import import_task, parse_flags  # noqa: E402

_CONFIG = config_flags.DEFINE_config_file("config", None, "Task config file[:variant].")
_WORKDIR = flags.DEFINE_string("workdir", None, "Workdir of a training run.")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    mesh_lib.maybe_initialize_distributed()
    loop.quiet_library_logs()
    config = _CONFIG.value
    task = import_task(config, "evaluate")
    metrics = task.evaluate(config, _WORKDIR.value)
    logging.info("Eval metrics:\n%s", json.dumps(metrics, indent=2, default=float))


if __name__ == "__main__":
    app.run(main, flags_parser=parse_flags)
