"""Is a checkpoint step the one that was saved, and is a state finite?

`checksums.json` in each step directory records the size and sha256 of every file the step holds
(but orbax's `_CHECKPOINT_METADATA`, which orbax rewrites at commit time with the commit time; it
is only checked to parse). `verify_step` compares, naming the step, the item (the step's top
directory: state, data, loop, metrics) and the file of each difference. `nonfinite_leaves` is the
NaN / Inf check `checkpoint.save` runs on the post-update state.
"""

from __future__ import annotations

import hashlib
import json
import os
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

CHECKSUMS = "checksums.json"
# orbax rewrites it after the commit (the commit time): checked for valid JSON, not hashed.
STEP_METADATA = "_CHECKPOINT_METADATA"


def _sha256(path: str) -> str:
    sha = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            sha.update(chunk)
    return sha.hexdigest()


def _file_digests(step_dir: str) -> dict[str, dict[str, Any]]:
    """{relative path: {"bytes", "sha256"}} of every file under `step_dir` but checksums.json."""
    digests = {}
    for root, dirs, files in os.walk(step_dir):
        dirs.sort()
        for name in sorted(files):
            path = os.path.join(root, name)
            relative = os.path.relpath(path, step_dir).replace(os.sep, "/")
            if relative in (CHECKSUMS, CHECKSUMS + ".tmp", STEP_METADATA):
                continue
            digests[relative] = {"bytes": os.path.getsize(path), "sha256": _sha256(path)}
    return digests


def write_checksums(step_dir: str) -> None:
    """Writes `step_dir/checksums.json` (atomically) describing the files there now."""
    payload = {"format": 1, "files": _file_digests(step_dir)}
    tmp = os.path.join(step_dir, CHECKSUMS + ".tmp")
    with open(tmp, "w") as f:
        json.dump(payload, f, indent=1, sort_keys=True)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, os.path.join(step_dir, CHECKSUMS))


def _item_of(relative: str) -> str:
    return relative.split("/", 1)[0] if "/" in relative else "(step metadata)"


def verify_step(directory: str, step: int) -> tuple[str, str]:
    """("ok" | "unverified" | "corrupt", what is wrong) for step `step` under `directory`.

    "unverified": the step has no checksums.json (written before checksums existed).
    """
    step_dir = os.path.join(str(directory), str(step))
    path = os.path.join(step_dir, CHECKSUMS)
    if not os.path.exists(path):
        return "unverified", f"step {step} has no {CHECKSUMS}"
    try:
        with open(path) as f:
            expected = json.load(f)["files"]
        assert isinstance(expected, dict)
    except (OSError, ValueError, KeyError, TypeError, AssertionError) as e:
        return "corrupt", f"step {step}: {path} is unreadable ({e})"
    problems = []
    metadata = os.path.join(step_dir, STEP_METADATA)
    try:
        with open(metadata) as f:
            json.load(f)
    except (OSError, ValueError) as e:
        problems.append(f"item '(step metadata)', file {metadata} is unreadable ({e})")
    for relative, want in sorted(expected.items()):
        file = os.path.join(step_dir, relative)
        where = f"item {_item_of(relative)!r}, file {file}"
        if not os.path.exists(file):
            item_dir = os.path.join(step_dir, _item_of(relative))
            if "/" in relative and not os.path.isdir(item_dir):
                problems.append(f"item {_item_of(relative)!r} is missing (no {item_dir})")
            else:
                problems.append(f"{where} is missing")
            continue
        size = os.path.getsize(file)
        if size != want["bytes"]:
            problems.append(f"{where} has {size} bytes, {want['bytes']} when saved (truncated?)")
            continue
        if _sha256(file) != want["sha256"]:
            problems.append(f"{where} changed since it was saved (sha256 mismatch)")
    problems = list(dict.fromkeys(problems))  # one line per missing item
    if problems:
        return "corrupt", f"step {step}: " + "; ".join(problems[:5])
    return "ok", ""


def _finite_flags(tree: Any) -> jax.Array:
    leaves = [x for x in jax.tree.leaves(tree) if jnp.issubdtype(x.dtype, jnp.inexact)]
    return jnp.stack([jnp.all(jnp.isfinite(x)) for x in leaves] or [jnp.array(True)])


_finite_flags_jit = jax.jit(_finite_flags)


def nonfinite_leaves(tree: Any) -> list[str]:
    """Paths of the floating-point leaves of `tree` holding NaN / Inf ([] when all finite).

    One jitted all-reduction and one host transfer of a [num_leaves] bool vector: cheap enough
    for every save, not meant for every step.
    """
    flags = _finite_flags_jit(tree)
    if flags.is_fully_addressable:
        flags = np.asarray(flags)
    else:
        from jax.experimental import multihost_utils

        flags = np.asarray(multihost_utils.process_allgather(flags, tiled=True))
    if flags.all():
        return []
    paths = [
        jax.tree_util.keystr(path)
        for path, x in jax.tree_util.tree_leaves_with_path(tree)
        if jnp.issubdtype(x.dtype, jnp.inexact)
    ]
    return [path for path, ok in zip(paths, flags, strict=False) if not ok]
