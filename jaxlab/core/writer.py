"""Process-0 metric writer: JSON lines, TensorBoard event files and one absl log line.

Every train loop logs through one `MetricWriter(workdir)`. Only process 0 writes (the others
get a writer whose methods do nothing), so multi-host runs produce one copy of each file:

    workdir/metrics.jsonl   one strict-JSON object per `write_scalars` call, flushed at once,
                            so a crash loses nothing; read back with `read_metrics`.
    workdir/tb/             TensorBoard events (scalars, images, text, hparams with their
                            metrics), via tensorboardX,
                            which needs neither TensorFlow nor torch (clu's writers import TF).
                            Written synchronously: tensorboardX's SummaryWriter queues events
                            for a thread and its flush() does not wait for that queue.
    workdir/hparams.json    the flattened config, from `write_hparams`.

`figure_to_image` turns a matplotlib figure into the uint8 array `write_images` takes: the train
loops write one telling figure per evaluation under `eval/<name>`.

Scalar names are TensorBoard tags as they are (letters, digits and `_ . - /`, no leading `/`):
TensorBoard renames any other character, so a name that would differ between metrics.jsonl (or a
task's metrics.json) and TensorBoard is a ValueError naming it.

`write_scalars` fetches all values with one `jax.device_get` and converts them to `float`:
that is the one device-to-host sync of a logging step, so pass device arrays straight from the
train step and call it every `log_every` steps only. JSON has no NaN or Inf, so non-finite
values are stored as the strings "nan", "inf" and "-inf"; `read_metrics` turns them back into
floats.
"""

import itertools
import json
import math
import os
import re
import time
from collections.abc import Mapping
from typing import Any

import jax
import ml_collections
import numpy as np
from absl import logging
from tensorboardX import summary as tb_summary
from tensorboardX.event_file_writer import EventsWriter
from tensorboardX.proto.event_pb2 import Event

from jaxlab.core import console, lock

METRICS_FILE = "metrics.jsonl"
HPARAMS_FILE = "hparams.json"
TB_DIR = "tb"

_NON_FINITE = {"nan": math.nan, "inf": math.inf, "-inf": -math.inf}
# The characters TensorBoard keeps in a tag (tensorboardX and tf.summary replace others by "_").
_TAG_CHARACTERS = re.compile(r"[-/\w.]+")
# Event file names only carry the time in seconds; this keeps two writers apart.
_writer_ids = itertools.count()


def _to_float(key: str, value: Any) -> float:
    array = np.asarray(value)
    if array.size != 1:
        raise ValueError(f"Scalar {key!r} has shape {array.shape}; expected a single value.")
    return float(array.reshape(()))


def check_tag(name: str) -> str:
    """Returns `name` when TensorBoard shows it unchanged; else a ValueError naming it.

    TensorBoard's summary ops replace every character but letters, digits and `_ . - /` with `_`
    and strip leading slashes (`brier/refc>=35` becomes `brier/refc__35`), so such a name would
    differ from the same metric's key in metrics.json.
    """
    if not _TAG_CHARACTERS.fullmatch(name) or name.startswith("/"):
        shown = re.sub(r"[^-/\w.]", "_", name).lstrip("/")
        raise ValueError(
            f"Metric name {name!r} is not a legal TensorBoard tag (TensorBoard would show it as "
            f"{shown!r}); use only letters, digits and _ . - / so metrics.json and TensorBoard "
            "name it alike."
        )
    return name


def _json_value(value: float) -> float | str:
    return value if math.isfinite(value) else str(value)  # "nan", "inf", "-inf"


def _format(value: float) -> str:
    if value == 0 or 1e-2 <= abs(value) < 1e5 or not math.isfinite(value):
        return f"{value:.4f}"
    return f"{value:.2e}"


def _flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """{"a": {"b": 1}} -> {"a.b": 1}; values other than bool/int/float/str become str."""
    flat = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, ml_collections.ConfigDict):
            value = value.to_dict()
        if isinstance(value, np.generic):
            value = value.item()
        if isinstance(value, Mapping):
            flat.update(_flatten(value, prefix=f"{name}."))
        elif isinstance(value, bool | int | float | str):
            flat[name] = value
        else:
            flat[name] = str(value)
    return flat


def _as_dict(tree: Any) -> Any:
    return tree.to_dict() if isinstance(tree, ml_collections.ConfigDict) else tree


def _markdown_table(flat: Mapping[str, Any]) -> str:
    """{"a.b": 1} -> a two-column markdown table, for TensorBoard's Text tab."""
    rows = [f"| `{key}` | `{value}` |" for key, value in sorted(flat.items())]
    return "\n".join(["| key | value |", "|---|---|", *rows])


class MetricWriter:
    """Writes scalars, images and hparams on process 0; a no-op elsewhere.

    Usable as a context manager (`with MetricWriter(workdir) as writer:`), which closes it.
    """

    def __init__(self, workdir: str, *, enabled: bool | None = None):
        """Creates `workdir`, `workdir/tb` and opens `metrics.jsonl` for appending.

        Args:
          workdir: run directory.
          enabled: whether to write at all; defaults to `jax.process_index() == 0`. A disabled
            writer creates nothing.
        """
        self.workdir = workdir
        self.enabled = jax.process_index() == 0 if enabled is None else enabled
        self._jsonl = None
        self._tb = None
        if self.enabled:
            os.makedirs(os.path.join(lock.make_workdir(workdir), TB_DIR), exist_ok=True)
            # Appending: a resumed run continues the same file, minus a torn last line.
            _drop_torn_tail(os.path.join(workdir, METRICS_FILE))
            self._jsonl = open(os.path.join(workdir, METRICS_FILE), "a")  # noqa: SIM115
            self._tb = EventsWriter(
                os.path.join(workdir, TB_DIR, "events"),
                filename_suffix=f".{os.getpid()}.{next(_writer_ids)}",
            )

    def _write_summary(self, step: int, summary) -> None:
        self._tb.write_event(Event(wall_time=time.time(), step=int(step), summary=summary))

    def write_scalars(
        self, step: int, scalars: Mapping[str, Any], *, shown_on_bar: bool = False
    ) -> None:
        """Appends `{"step": step, **scalars}` to metrics.jsonl, TensorBoard and the log.

        Args:
          step: train step.
          scalars: name -> Python, numpy or jax scalar (any shape with one element).
          shown_on_bar: the values are on a live progress bar (`loop.Progress.live`): the log
            line is marked `console.SHOWN_ON_BAR`, so it reaches absl's log file, when one is in
            use, but not the terminal a second time.
        """
        if not self.enabled:
            return
        step = int(step)
        host = jax.device_get(dict(scalars))  # One transfer for all device arrays.
        values = {check_tag(key): _to_float(key, host[key]) for key in scalars}  # Caller's order.
        record = {"step": step, **{k: _json_value(v) for k, v in values.items()}}
        self._jsonl.write(json.dumps(record, allow_nan=False) + "\n")
        self._jsonl.flush()
        for key, value in values.items():
            self._write_summary(step, tb_summary.scalar(key, value))
        logging.info(
            " | ".join([f"step {step}"] + [f"{k} {_format(v)}" for k, v in values.items()]),
            extra={console.SHOWN_ON_BAR: shown_on_bar},
        )

    def truncate_after(self, step: int) -> None:
        """Drops metrics.jsonl records of steps after `step` (atomic rewrite), on resume.

        A run killed after its last checkpoint logged steps the resumed run trains again; without
        this they would appear twice. Lines that do not parse are kept as they are.
        """
        if not self.enabled:
            return
        path = os.path.join(self.workdir, METRICS_FILE)
        self._jsonl.flush()
        with open(path) as f:
            lines = f.readlines()
        kept = [line for line in lines if _record_step(line) is None or _record_step(line) <= step]
        if len(kept) == len(lines):
            return
        tmp = path + ".tmp"
        with open(tmp, "w") as f:
            f.writelines(kept)
            f.flush()
            os.fsync(f.fileno())
        self._jsonl.close()
        os.replace(tmp, path)
        self._jsonl = open(path, "a")  # noqa: SIM115
        logging.info(
            "%s: dropped %d records of steps after %d (logged after that checkpoint).",
            path,
            len(lines) - len(kept),
            step,
        )

    def write_images(self, step: int, images: Mapping[str, np.ndarray]) -> None:
        """Writes images to TensorBoard only.

        Args:
          step: train step.
          images: name -> array of shape HW, HWC or NHWC (C in {1, 3, 4}); float in [0, 1] or
            uint8.
        """
        if not self.enabled:
            return
        for key, image in images.items():
            image = np.asarray(image)
            formats = {2: "HW", 3: "HWC", 4: "NHWC"}.get(image.ndim)  # NHWC: shown as a grid.
            if formats is None:
                raise ValueError(
                    f"Image {key!r} has shape {image.shape}; expected HW, HWC or NHWC."
                )
            self._write_summary(step, tb_summary.image(key, image, dataformats=formats))

    def write_hparams(self, hparams: Mapping[str, Any]) -> None:
        """Writes the flattened hparams ("model.dim": 64) to hparams.json and as TensorBoard text.

        The TensorBoard HParams entry is written once the run has metrics, by
        `write_hparams_with_metrics`: TensorBoard keeps the first hparams summary of a run, so an
        entry without metrics written here would hide the later one.

        Args:
          hparams: nested mapping or `ml_collections.ConfigDict`, e.g. the whole config.
        """
        if not self.enabled:
            return
        flat = _flatten(_as_dict(hparams))
        with open(os.path.join(self.workdir, HPARAMS_FILE), "w") as f:
            json.dump(flat, f, indent=2, sort_keys=True)
        self.write_text(0, {"config": _markdown_table(flat)})

    def write_hparams_with_metrics(
        self, hparams: Mapping[str, Any], metrics: Mapping[str, Any], step: int = 0
    ) -> None:
        """The run's TensorBoard HParams entry: flattened hparams and their metric values.

        Like tensorboardX's `add_hparams`, but into this run's own event files: the hparams
        plugin's experiment / session summaries name each metric tag, and each metric is written
        as a scalar under that tag at `step`, so the HParams tab compares runs (one workdir each)
        by these values. Call once a run has its final metrics (`jaxlab train` does).

        Args:
          hparams: nested mapping or `ml_collections.ConfigDict`.
          metrics: tag -> scalar, e.g. {"final/eval_mse": 0.02}.
          step: the step the metrics belong to.
        """
        if not self.enabled:
            return
        flat = _flatten(_as_dict(hparams))
        host = jax.device_get(dict(metrics))
        values = {check_tag(key): _to_float(key, host[key]) for key in metrics}
        for summary in tb_summary.hparams(flat, values):
            self._write_summary(step, summary)
        self.write_summary_scalars(step, values)

    def write_summary_scalars(self, step: int, scalars: Mapping[str, Any]) -> None:
        """Writes scalars to TensorBoard only (not metrics.jsonl): results computed outside the
        train loop, such as a separate evaluation's metrics."""
        if not self.enabled:
            return
        host = jax.device_get(dict(scalars))
        for key in scalars:
            value = _to_float(key, host[key])
            self._write_summary(step, tb_summary.scalar(check_tag(key), value))
        self._tb.flush()

    def write_text(self, step: int, texts: Mapping[str, str]) -> None:
        """Writes markdown text to TensorBoard's Text tab (run records: config, provenance)."""
        if not self.enabled:
            return
        for key, text in texts.items():
            self._write_summary(step, tb_summary.text(key, text))
        self._tb.flush()

    def flush(self) -> None:
        """Pushes buffered TensorBoard events to disk (metrics.jsonl is flushed on every write)."""
        if self.enabled:
            self._jsonl.flush()
            self._tb.flush()

    def close(self) -> None:
        """Flushes and closes the files; afterwards every method is a no-op."""
        if self.enabled and self._jsonl is not None:
            self._jsonl.close()
            self._tb.close()
            self._jsonl = self._tb = None
            self.enabled = False

    def __enter__(self) -> "MetricWriter":
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()


def figure_to_image(fig: Any) -> np.ndarray:
    """Renders a matplotlib figure to an RGB array [H, W, 3] uint8 and closes it.

    H and W are the figure's size in inches times its dpi (no tight bounding box), so a task sizes
    its TensorBoard images with `plt.subplots(figsize=..., dpi=...)`. Rendered with Agg whatever
    the pyplot backend; matplotlib is imported here only, so the writer loads without it.
    """
    from matplotlib import pyplot as plt
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    plt.close(fig)  # Out of pyplot's registry (a no-op for a figure made without pyplot).
    canvas = fig.canvas if isinstance(fig.canvas, FigureCanvasAgg) else FigureCanvasAgg(fig)
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[..., :3].copy()


def _drop_torn_tail(path: str) -> None:
    """Cuts a last line without its newline (a write killed midway) off the file at `path`."""
    if not os.path.exists(path) or os.path.getsize(path) == 0:
        return
    with open(path, "rb+") as f:
        f.seek(0, os.SEEK_END)
        size = f.tell()
        f.seek(max(0, size - (1 << 20)))
        tail = f.read()
        if tail.endswith(b"\n"):
            return
        cut = tail.rfind(b"\n")
        keep = (
            size - len(tail) + cut + 1
            if cut >= 0
            else (size - len(tail) if size > len(tail) else 0)
        )
        logging.warning(
            "%s: dropping a torn last line (%d bytes) left by a killed run.", path, size - keep
        )
        f.truncate(keep)


def _record_step(line: str) -> int | None:
    """The "step" of a metrics.jsonl line, or None when the line is not a record."""
    try:
        record = json.loads(line)
    except json.JSONDecodeError:
        return None
    step = record.get("step") if isinstance(record, dict) else None
    return step if isinstance(step, int) else None


def read_metrics(workdir: str) -> list[dict[str, Any]]:
    """Parses workdir/metrics.jsonl into one dict per line, non-finite values as floats.

    A last line without its newline is a write still in progress (the file of a live run): it is
    left out rather than reported as corrupt.

    Raises:
      FileNotFoundError: when the file does not exist.
      ValueError: naming the file and line number of a line that is not a JSON object.
    """
    path = os.path.join(workdir, METRICS_FILE)
    records = []
    with open(path) as f:
        for line_number, line in enumerate(f, start=1):
            if not line.strip() or not line.endswith("\n"):
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}, line {line_number}: not valid JSON ({e}).") from e
            if not isinstance(record, dict):
                raise ValueError(f"{path}, line {line_number}: expected a JSON object.")
            records.append(
                {k: _NON_FINITE.get(v, v) if isinstance(v, str) else v for k, v in record.items()}
            )
    return records
