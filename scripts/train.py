"""Trains one task: `python scripts/train.py --config=glitch:demo --workdir=runs/glitch`.

Config values are overridden with flags such as `--config.optim.lr=1e-4`. Rerunning with the same
workdir resumes from its latest checkpoint. Multi-process jobs: see README ("Several GPUs / TPU
hosts").
"""

import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))  # for jaxlab/configs/

from absl import app, flags, logging  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from jaxlab.core import loop  # noqa: E402
from jaxlab.core import mesh as mesh_lib  # noqa: E402
from jaxlab.core.task import import_task, parse_flags  # noqa: E402

_CONFIG = config_flags.DEFINE_config_file("config", None, "Task config file[:variant].")
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics and outputs.")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    mesh_lib.maybe_initialize_distributed()
    loop.quiet_library_logs()
    config = _CONFIG.value
    task = import_task(config, "train")
    logging.info("Training %s in %s with config:\n%s", config.task, _WORKDIR.value, config)
    task.train_and_evaluate(config, _WORKDIR.value)


if __name__ == "__main__":
    app.run(main, flags_parser=parse_flags)
