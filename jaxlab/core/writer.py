"""Process-0 metric writer: JSON lines, TensorBoard event files and one absl log line.

Every train loop logs through one `MetricWriter(workdir)`. Only process 0 writes (the others
get a writer whose methods do nothing), so multi-host runs produce one copy of each file:

    workdir/metrics.jsonl   one strict-JSON object per `write_scalars` call, flushed at once,
                            so a crash loses nothing; read back with `read_metrics`.
    workdir/tb/             TensorBoard events (scalars, images, hparams), via tensorboardX,
                            which needs neither TensorFlow nor torch (clu's writers import TF).
                            Written synchronously: tensorboardX's SummaryWriter queues events
                            for a thread and its flush() does not wait for that queue.
    workdir/hparams.json    the flattened config, from `write_hparams`.

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

METRICS_FILE = "metrics.jsonl"
HPARAMS_FILE = "hparams.json"
TB_DIR = "tb"

_NON_FINITE = {"nan": math.nan, "inf": math.inf, "-inf": -math.inf}
# Event file names only carry the time in seconds; this keeps two writers apart.
_writer_ids = itertools.count()


def _to_float(key: str, value: Any) -> float:
    array = np.asarray(value)
    if array.size != 1:
        raise ValueError(f"Scalar {key!r} has shape {array.shape}; expected a single value.")
    return float(array.reshape(()))


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
            os.makedirs(os.path.join(workdir, TB_DIR), exist_ok=True)
            # Appending: a resumed run continues the same file.
            self._jsonl = open(os.path.join(workdir, METRICS_FILE), "a")  # noqa: SIM115
            self._tb = EventsWriter(
                os.path.join(workdir, TB_DIR, "events"),
                filename_suffix=f".{os.getpid()}.{next(_writer_ids)}",
            )

    def _write_summary(self, step: int, summary) -> None:
        self._tb.write_event(Event(wall_time=time.time(), step=int(step), summary=summary))

    def write_scalars(self, step: int, scalars: Mapping[str, Any]) -> None:
        """Appends `{"step": step, **scalars}` to metrics.jsonl, TensorBoard and the log.

        Args:
          step: train step.
          scalars: name -> Python, numpy or jax scalar (any shape with one element).
        """
        if not self.enabled:
            return
        step = int(step)
        host = jax.device_get(dict(scalars))  # One transfer for all device arrays.
        values = {key: _to_float(key, host[key]) for key in scalars}  # The caller's order.
        record = {"step": step, **{k: _json_value(v) for k, v in values.items()}}
        self._jsonl.write(json.dumps(record, allow_nan=False) + "\n")
        self._jsonl.flush()
        for key, value in values.items():
            self._write_summary(step, tb_summary.scalar(key, value))
        logging.info(
            " | ".join([f"step {step}"] + [f"{k} {_format(v)}" for k, v in values.items()])
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
        """Writes the flattened hparams ("model.dim": 64) to TensorBoard and hparams.json.

        Args:
          hparams: nested mapping or `ml_collections.ConfigDict`, e.g. the whole config.
        """
        if not self.enabled:
            return
        if isinstance(hparams, ml_collections.ConfigDict):
            hparams = hparams.to_dict()
        flat = _flatten(hparams)
        with open(os.path.join(self.workdir, HPARAMS_FILE), "w") as f:
            json.dump(flat, f, indent=2, sort_keys=True)
        for summary in tb_summary.hparams(flat, {}):
            self._write_summary(0, summary)

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
