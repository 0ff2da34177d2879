"""`jaxlab demo` (`make demo`): every finished task trains on its synthetic demo data, then is
evaluated from its checkpoint; one summary table at the end.

Each task writes its demo dataset in the real on-disk format first, so this exercises the same
readers, pipelines, train loops and checkpoint restores a run on the real download uses.
"""

import pathlib
import shutil
import time

from absl import app, flags, logging

from jaxlab.core import loop
from jaxlab.core import mesh as mesh_lib
from jaxlab.core.task import import_task, load_config

# (task, config file, headline metric, baseline metric it should beat, "lower"/"higher" is
# better). Each task issue adds its line when the task is finished.
DEMOS = [
    ("example", "example", "eval_mse", "baseline_mse", "lower"),
    ("glitch", "glitch", "accuracy", "baseline_majority_accuracy", "higher"),
    ("neutrino", "neutrino", "mean_angular_error", "baseline_constant", "lower"),
    ("vegetation", "vegetation", "ndvi_rmse", "persistence_ndvi_rmse", "lower"),
    ("sales", "sales", "discriminative_score", "discriminative_score_naive", "lower"),
    ("weather", "weather", "crps", "persistence_crps", "lower"),
]

_WORKDIR = flags.DEFINE_string("workdir", "runs/demo", "Parent directory of the task workdirs.")
_TASKS = flags.DEFINE_list("tasks", None, "Subset of tasks to run (default: all).")
_FRESH = flags.DEFINE_bool("fresh", True, "Delete an earlier demo run of each task first.")


def run_demo(task_name: str, config_file: str, workdir: pathlib.Path) -> dict[str, float]:
    """Trains then evaluates one task's demo config; returns the evaluation metrics."""
    config = load_config(f"{config_file}:demo")
    train = import_task(config, "train")
    evaluate = import_task(config, "evaluate")
    if _FRESH.value and workdir.exists():
        shutil.rmtree(workdir)
    logging.info("=== %s: training (%s:demo) in %s", task_name, config_file, workdir)
    train.train_and_evaluate(config, str(workdir))
    logging.info("=== %s: evaluating from checkpoint", task_name)
    return evaluate.evaluate(config, str(workdir))


def summary_table(rows: list[tuple[str, str, float, float, str, float]]) -> str:
    header = (
        f"{'task':<12} {'metric':<20} {'value':>10} {'baseline':>10} {'beats it':>9} {'minutes':>8}"
    )
    lines = [header, "-" * len(header)]
    for task, metric, value, baseline, better, minutes in rows:
        beats = value < baseline if better == "lower" else value > baseline
        lines.append(
            f"{task:<12} {metric:<20} {value:>10.4g} {baseline:>10.4g} "
            f"{'yes' if beats else 'NO':>9} {minutes:>8.2f}"
        )
    return "\n".join(lines)


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    loop.quiet_library_logs()
    mesh_lib.maybe_initialize_distributed()
    selected = [d for d in DEMOS if _TASKS.value is None or d[0] in _TASKS.value]
    rows = []
    for task_name, config_file, metric, baseline, better in selected:
        start = time.time()
        metrics = run_demo(task_name, config_file, pathlib.Path(_WORKDIR.value) / task_name)
        minutes = (time.time() - start) / 60
        rows.append((task_name, metric, metrics[metric], metrics[baseline], better, minutes))
    print("\n" + summary_table(rows), flush=True)
