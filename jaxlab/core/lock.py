"""One training run per workdir: an advisory `fcntl.flock` on `workdir/.lock`.

Process 0 of a training run holds the lock for the run's life and writes its host, pid and start
time into the file, so a second `train` on the same workdir stops at once with one error naming
the holder instead of overwriting its checkpoints and metrics. The kernel drops the lock when the
holder exits, however it exits (kill -9 included); a clean release also empties the file, so a
non-empty file found by the next holder is the trace of a run that died, logged as a warning.

A lock that cannot be taken although its recorded holder is a dead process on this host (a child
that inherited the descriptor still holds it) is stale: the file is replaced and the lock taken
over, with a warning. Evaluation and prediction never take the lock: they only read.

flock is advisory and local to a kernel: on NFS and other shared filesystems it may not be
honoured across hosts, so two hosts can still both "hold" it there.
"""

from __future__ import annotations

import datetime
import fcntl
import json
import os
import socket

from absl import logging

LOCK_FILE = ".lock"


class WorkdirLockedError(RuntimeError):
    """Another live run holds the workdir; the message names its host, pid and start time."""


class WorkdirLock:
    """A held lock; `release()` (idempotent) empties the file and unlocks it."""

    def __init__(self, path: str, fd: int):
        self.path = path
        self._fd = fd

    @property
    def held(self) -> bool:
        return self._fd >= 0

    def release(self) -> None:
        if self._fd < 0:
            return
        try:
            os.ftruncate(self._fd, 0)  # empty = released cleanly
            fcntl.flock(self._fd, fcntl.LOCK_UN)
        finally:
            os.close(self._fd)
            self._fd = -1


def _holder_text(holder: dict | None) -> str:
    if not holder:
        return "an unknown process (the lock file is empty or unreadable)"
    return (
        f"pid {holder.get('pid')} on host {holder.get('host')!r}, started {holder.get('started')}"
    )


def _read_holder(fd: int) -> dict | None:
    os.lseek(fd, 0, os.SEEK_SET)
    text = os.read(fd, 4096).decode(errors="replace").strip()
    if not text:
        return None
    try:
        holder = json.loads(text)
    except json.JSONDecodeError:
        return None
    return holder if isinstance(holder, dict) else None


def _is_dead_here(holder: dict | None) -> bool:
    """True when `holder` names a process of this host that no longer exists."""
    if not holder or holder.get("host") != socket.gethostname():
        return False
    try:
        os.kill(int(holder["pid"]), 0)
    except ProcessLookupError:
        return True
    except (PermissionError, KeyError, TypeError, ValueError):
        return False
    return False


def check_not_a_file(workdir: str) -> None:
    """Raises NotADirectoryError saying what a workdir must be when `workdir` is a file."""
    if os.path.lexists(workdir) and not os.path.isdir(workdir):
        raise NotADirectoryError(
            f"--workdir={workdir} is a file; the workdir must be a folder (a new one, or the "
            "workdir of an earlier run). Pass another --workdir."
        )


def make_workdir(workdir: str) -> str:
    """Creates the run folder `workdir` (and its parents) when missing; returns it.

    Every writer into a workdir (run records, lock, metric writer) creates it through here, so a
    path that is a file is one error saying what a workdir must be, not errno 17 or 20.

    Raises:
      NotADirectoryError: `workdir`, or a folder above it, is a file.
    """
    if os.path.isdir(workdir):
        return workdir
    check_not_a_file(workdir)
    parent = os.path.dirname(os.path.abspath(workdir))
    while not os.path.lexists(parent):
        parent = os.path.dirname(parent)
    if not os.path.isdir(parent):
        raise NotADirectoryError(
            f"--workdir={workdir}: cannot create the folder, {parent} is a file; the workdir "
            "must be a folder. Pass another --workdir."
        )
    os.makedirs(workdir, exist_ok=True)
    return workdir


def acquire(workdir: str) -> WorkdirLock:
    """Takes `workdir/.lock` (creating workdir) or raises WorkdirLockedError naming the holder."""
    make_workdir(workdir)
    path = os.path.join(workdir, LOCK_FILE)
    for attempt in range(2):
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)  # not inherited by children (PEP 446)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_holder(fd)
            os.close(fd)
            if attempt == 0 and _is_dead_here(holder):
                logging.warning(
                    "%s: stale lock of %s (that process is gone); taking it over.",
                    path,
                    _holder_text(holder),
                )
                os.unlink(path)
                continue
            raise WorkdirLockedError(
                f"{path}: the workdir is in use by another training run ({_holder_text(holder)}). "
                "Wait for it to finish, stop it, or train in another --workdir. (Evaluation "
                "does not need the lock.)"
            ) from None
        previous = _read_holder(fd)
        if previous is not None:
            logging.warning(
                "%s: the previous run (%s) ended without releasing the workdir (killed?); "
                "taking it over.",
                path,
                _holder_text(previous),
            )
        me = {
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "started": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        }
        os.ftruncate(fd, 0)
        os.lseek(fd, 0, os.SEEK_SET)
        os.write(fd, (json.dumps(me) + "\n").encode())
        os.fsync(fd)
        return WorkdirLock(path, fd)
    raise AssertionError("unreachable")
