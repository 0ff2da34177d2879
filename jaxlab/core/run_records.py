"""Run records a researcher can compare: provenance, final metrics and evaluations in TensorBoard.

Written by `jaxlab train` / `jaxlab evaluate` on process 0: `workdir/run_info.json` (git SHA and
whether the checkout was dirty, package versions, devices, hosts, the command) and its TensorBoard
text once per run (a resumed run appends itself under "resumed"); after training the HParams entry
with the final metrics (`final/<metric>`), so TensorBoard's HParams tab compares runs; after an
evaluation its metrics as TensorBoard scalars and its PNG figures as images.
"""

from __future__ import annotations

import datetime
import importlib.metadata
import json
import pathlib
import platform
import socket
import subprocess
import sys
from collections.abc import Mapping
from typing import Any

RUN_INFO_JSON = "run_info.json"  # provenance, written by `jaxlab train`
PACKAGES = (
    "jaxlab",
    "jax",
    "jaxlib",
    "flax",
    "optax",
    "orbax-checkpoint",
    "grain",
    "numpy",
    "ml_collections",
    "tensorboardX",
)


def package_versions(names: tuple[str, ...] = PACKAGES) -> dict[str, str | None]:
    """{package: installed version or None}, read from the package metadata (nothing imported)."""
    versions = {}
    for name in names:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def _read_json(path: pathlib.Path) -> Any:
    with open(path) as f:
        return json.load(f)


def git_revision(path: pathlib.Path) -> dict[str, Any] | None:
    """{"sha", "dirty"} of the git checkout holding `path`; None outside one (a wheel)."""
    try:
        sha = subprocess.run(
            ["git", "-C", str(path), "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
        status = subprocess.run(
            ["git", "-C", str(path), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    return {"sha": sha, "dirty": bool(status.strip())}


def run_info(spec: str, overrides: list[str]) -> dict[str, Any]:
    """Provenance of this process: code, packages, devices and hosts, the command."""
    import jax

    package_dir = pathlib.Path(__file__).resolve().parents[1]  # jaxlab/
    in_checkout = (package_dir.parent / ".git").exists()
    versions = package_versions()
    device = jax.devices()[0]
    return {
        "time": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "command": " ".join(["jaxlab", *sys.argv[1:]]),
        "config": spec,
        "overrides": overrides,
        "git": git_revision(package_dir) if in_checkout else None,
        "package_dir": str(package_dir),
        "python": platform.python_version(),
        "packages": versions,
        "backend": jax.default_backend(),
        "device_kind": device.device_kind,
        "device_count": jax.device_count(),
        "local_device_count": jax.local_device_count(),
        "process_count": jax.process_count(),
        "host": socket.gethostname(),
    }


def write_run_info(workdir: str, info: dict[str, Any]) -> None:
    """`workdir/run_info.json` and its TensorBoard text, once per run (process 0).

    A resumed run keeps the first record and appends its own under "resumed".
    """
    import jax

    from jaxlab.core.lock import make_workdir
    from jaxlab.core.writer import MetricWriter

    if jax.process_index() != 0:
        return
    path = pathlib.Path(make_workdir(workdir)) / RUN_INFO_JSON
    if path.exists():
        record = _read_json(path)
        record.setdefault("resumed", []).append(info)
        path.write_text(json.dumps(record, indent=2) + "\n")
        return
    path.write_text(json.dumps(info, indent=2) + "\n")
    with MetricWriter(workdir) as writer:
        writer.write_text(0, {"run_info": "```\n" + json.dumps(info, indent=2) + "\n```"})


def _numbers(metrics: Any) -> dict[str, float]:
    """The scalar numbers of a task's returned metrics (it may also return lists, strings)."""
    import numpy as np

    if not isinstance(metrics, Mapping):
        return {}
    numbers = {}
    for key, value in metrics.items():
        if isinstance(value, bool | str) or not np.isscalar(value) and np.ndim(value) != 0:
            continue
        try:
            numbers[key] = float(value)
        except (TypeError, ValueError):
            continue
    return numbers


def _last_step(workdir: str) -> int:
    from jaxlab.core import writer as writer_lib

    try:
        return max((int(r.get("step", 0)) for r in writer_lib.read_metrics(workdir)), default=0)
    except (FileNotFoundError, ValueError):
        return 0


def record_final_metrics(config: Any, workdir: str, metrics: Any) -> None:
    """The run's TensorBoard HParams entry: the flattened config with `final/<metric>` values."""
    from jaxlab.core.writer import MetricWriter

    values = _numbers(metrics)
    if not values:
        return
    with MetricWriter(workdir) as writer:
        writer.write_hparams_with_metrics(
            config, {f"final/{k}": v for k, v in values.items()}, step=_last_step(workdir)
        )


def record_evaluation(config: Any, workdir: str, metrics: Any) -> None:
    """An evaluation's metrics as TensorBoard scalars and its PNG figures as images."""
    import numpy as np
    from PIL import Image

    from jaxlab.core.writer import MetricWriter

    split = config.eval.get("split", "eval")
    values = _numbers(metrics)
    step = int(values.get("checkpoint_step", _last_step(workdir)))
    figures = sorted((pathlib.Path(workdir) / "eval" / str(split)).glob("*.png"))
    with MetricWriter(workdir) as writer:
        writer.write_summary_scalars(step, {f"evaluate/{split}/{k}": v for k, v in values.items()})
        for figure in figures:
            with Image.open(figure) as image:
                pixels = np.asarray(image.convert("RGB"))
            writer.write_images(step, {f"evaluate/{split}/{figure.stem}": pixels})
