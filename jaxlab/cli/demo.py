"""`jaxlab demo` (`make demo`): every finished task trains on its synthetic demo data, is
evaluated from its checkpoint, exported as a bundle and predicts from that bundle; one summary
table at the end.

Each task writes its demo dataset in the real on-disk format first, so this exercises the same
readers, pipelines, train loops, checkpoint restores, bundles and predict readers a run on the
real download uses. Per task, under `<workdir>/<task>/`: `bundle/` (`jaxlab export`) and
`predict/` (`jaxlab predict` on `predict.demo_input(config, workdir)`, held-out unlabelled
inputs). A task without `predict.py` is noted in the table's `predict` column; a failing export
or predict is logged with its traceback, marked in the table, and makes the demo exit 1 after
the table.
"""

import importlib.util
import pathlib
import shutil
import sys
import time

from absl import app, flags, logging

from jaxlab.core import bundle as bundle_lib
from jaxlab.core import config as config_lib
from jaxlab.core import loop
from jaxlab.core import mesh as mesh_lib
from jaxlab.core.task import TASKS, import_task

_WORKDIR = flags.DEFINE_string("workdir", "runs/demo", "Parent directory of the task workdirs.")
_TASKS = flags.DEFINE_list("tasks", None, "Subset of tasks to run (default: all).")
_FRESH = flags.DEFINE_bool("fresh", True, "Delete an earlier demo run of each task first.")


def run_demo(task_name: str, config_file: str, workdir: pathlib.Path) -> dict[str, float]:
    """Trains then evaluates one task's demo config; returns the evaluation metrics."""
    config = config_lib.load_config(f"{config_file}:demo")
    train = import_task(config, "train")
    evaluate = import_task(config, "evaluate")
    if _FRESH.value and workdir.exists():
        shutil.rmtree(workdir)
    logging.info("=== %s: training (%s:demo) in %s", task_name, config_file, workdir)
    train.train_and_evaluate(config, str(workdir))
    logging.info("=== %s: evaluating from checkpoint", task_name)
    return evaluate.evaluate(config, str(workdir))


def export_and_predict(config, workdir: pathlib.Path) -> list[str]:
    """Exports the demo model to `workdir/bundle`, then predicts from that bundle on the task's
    held-out demo input into `workdir/predict`; returns the files predict wrote."""
    predict = import_task(config, "predict")
    bundle = bundle_lib.export_bundle(config, str(workdir), str(workdir / "bundle"))
    inputs = predict.demo_input(config, str(workdir))
    logging.info("=== %s: predicting from %s on %s", config.task, bundle, inputs)
    written = predict.predict(
        bundle, inputs, str(workdir / "predict"), config=bundle_lib.read_config(bundle)
    )
    written = [written] if isinstance(written, str) else list(written)
    for path in written:
        logging.info("    wrote %s", path)
    return written


def predict_note(config, workdir: pathlib.Path) -> tuple[str, list[str]]:
    """The table's `predict` cell (files written, or why there are none) and those files."""
    if importlib.util.find_spec(f"{config.task}.predict") is None:
        return "skipped: no predict.py", []
    try:
        written = export_and_predict(config, workdir)
    except Exception:  # noqa: BLE001 -- the table shows it; main exits 1 after the table
        logging.exception("%s: export or predict failed", config.task)
        return "FAILED (see log)", []
    return f"{len(written)} file(s)", written


def summary_table(rows: list[tuple[str, str, float, float, str, float, str]]) -> str:
    header = (
        f"{'task':<12} {'metric':<20} {'value':>10} {'baseline':>10} {'beats it':>9} "
        f"{'minutes':>8}  predict"
    )
    lines = [header, "-" * (len(header) + 16)]
    for task, metric, value, baseline, better, minutes, predicted in rows:
        beats = value < baseline if better == "lower" else value > baseline
        lines.append(
            f"{task:<12} {metric:<20} {value:>10.4g} {baseline:>10.4g} "
            f"{'yes' if beats else 'NO':>9} {minutes:>8.2f}  {predicted}"
        )
    return "\n".join(lines)


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    loop.quiet_library_logs()
    mesh_lib.maybe_initialize_distributed()
    selected = [t for t in TASKS if _TASKS.value is None or t in _TASKS.value]
    rows, files = [], []
    for task_name in selected:
        config_file = task_name
        module = config_lib.config_module(config_lib.CONFIG_PACKAGE / f"{task_name}.py")
        metric, baseline, better = module.HEADLINE
        start = time.time()
        workdir = pathlib.Path(_WORKDIR.value) / task_name
        metrics = run_demo(task_name, config_file, workdir)
        predicted, written = predict_note(config_lib.load_config(f"{config_file}:demo"), workdir)
        files += written
        minutes = (time.time() - start) / 60
        row = (task_name, metric, metrics[metric], metrics[baseline], better, minutes, predicted)
        rows.append(row)
    print("\n" + summary_table(rows), flush=True)
    if files:
        print("\npredictions written (from each task's bundle/):\n  " + "\n  ".join(files))
    if any(row[-1].startswith("FAILED") for row in rows):
        sys.exit(1)
