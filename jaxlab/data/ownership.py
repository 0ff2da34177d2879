"""Synthetic data never touches a user's folder.

A task that writes its synthetic stand-in (``config.data.synthetic``) first claims the folder with
`claim_synthetic_dir`: the folder is accepted only when it is missing, empty, or already carries
jaxlab's marker file (`MARKER`, a small JSON note), and the marker is written before any data. A
folder holding anything else is the user's, and the claim fails with one error that says how to
use those files instead. Writers then call `check_not_overwriting(path)` before each file they
create or replace: an existing file may be replaced only below a marked folder.

    root = ownership.claim_synthetic_dir(config.data.dir or os.path.join(workdir, "data"))
    path = ownership.check_not_overwriting(os.path.join(root, "train_meta.parquet"))
"""

from __future__ import annotations

import datetime as dt
import json
import os

MARKER = ".jaxlab-synthetic"


class DataDirError(ValueError):
    """The data folder cannot take synthetic files (the message names the folder and the fix)."""


def _marker_note() -> dict:
    return {
        "written_by": "jaxlab",
        "contents": "synthetic stand-in data; every file in this folder may be rewritten by jaxlab",
        "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
    }


def _write_marker(directory: str) -> None:
    """Atomic write; the temporary name starts with MARKER so a concurrent claim ignores it."""
    marker = os.path.join(directory, MARKER)
    tmp = f"{marker}.{os.getpid()}.tmp"
    with open(tmp, "w") as f:
        json.dump(_marker_note(), f, indent=2)
    os.replace(tmp, marker)


def is_synthetic_dir(path: str) -> bool:
    """Whether `path` is a folder carrying jaxlab's synthetic marker."""
    return os.path.isfile(os.path.join(os.fspath(path), MARKER))


def claim_synthetic_dir(path: str, key: str = "data.dir") -> str:
    """Makes `path` jaxlab's synthetic-data folder, or refuses; returns the absolute path.

    Accepted: a missing folder (created), an empty one, or one already carrying `MARKER`. The
    marker is written before returning, so later runs (and `check_not_overwriting`) know the
    folder's files are jaxlab's. Anything else raises `DataDirError` and changes nothing; its
    message tells the user to point `key` (the task's config key of this folder, e.g.
    "data.root") elsewhere.
    """
    path = os.path.abspath(os.fspath(path))
    if os.path.exists(path) and not os.path.isdir(path):
        raise DataDirError(
            f"{path} is a file, not a folder; point {key} at a folder (empty, or one that "
            "jaxlab wrote synthetic data into)."
        )
    try:
        os.makedirs(path, exist_ok=True)
    except (NotADirectoryError, FileExistsError) as e:
        raise DataDirError(f"{path}: cannot create the folder ({e}); a parent is a file.") from e
    if is_synthetic_dir(path):
        return path
    foreign = sorted(name for name in os.listdir(path) if not name.startswith(MARKER))
    if foreign:
        examples = ", ".join(foreign[:3]) + (", ..." if len(foreign) > 3 else "")
        raise DataDirError(
            f"{path} holds files that jaxlab did not write (e.g. {examples}); set "
            f"data.synthetic=False to use them, or point {key} at an empty folder."
        )
    _write_marker(path)
    return path


def _marked_ancestor(path: str) -> str | None:
    """The nearest folder at or above dirname(path) that carries the marker, else None."""
    directory = os.path.dirname(path)
    while True:
        if is_synthetic_dir(directory):
            return directory
        parent = os.path.dirname(directory)
        if parent == directory:
            return None
        directory = parent


def check_not_overwriting(path: str, key: str = "data.dir") -> str:
    """Refuses to replace a file that jaxlab did not write; returns the absolute path.

    A writer calls this before creating or replacing `path`. A missing file is fine. An existing
    one may be replaced only when a folder at or above it carries `MARKER` (a folder claimed with
    `claim_synthetic_dir`); otherwise `DataDirError` names the file and the config `key` to
    point elsewhere. A folder at `path` is an error either way.
    """
    path = os.path.abspath(os.fspath(path))
    if os.path.isdir(path):
        raise DataDirError(
            f"{path} is a folder; a synthetic writer expected to write a file there."
        )
    if os.path.lexists(path) and _marked_ancestor(path) is None:
        raise DataDirError(
            f"{path} exists and jaxlab did not write it (no {MARKER} in its folder or above); "
            f"refusing to overwrite it. Set data.synthetic=False to use it, or point {key} at "
            "an empty folder."
        )
    return path
