"""What a person at a terminal sees: live tqdm bars, with the log lines printed above them.

A bar owns the terminal's last line: it redraws it with a carriage return. Anything else written
to the terminal meanwhile (absl's log lines, warnings, a traceback) would start at the bar's end
and wrap. So while a bar is open, `sys.stderr` and absl's log handler write through the bars:
each finished line is printed with `tqdm.write`, which clears the bars, prints the line and draws
them again below it. Partial lines wait for their newline, so a line is never split by a bar.

The bars themselves write to the terminal directly (the stream that was `sys.stderr` when the
first bar opened). When the last bar closes (or the process exits) the streams are put back.

A train step's metrics are on the bar (its postfix) and in metrics.jsonl, so the writer's log
line of that step (marked with `SHOWN_ON_BAR`) is left off the screen while absl writes to the
terminal only; absl's log file, when one is in use, still gets it.

Off a terminal (CI, a batch job, `| tee`) nothing here is used: loops log plain lines. Process 0
alone shows bars. absl's flags (--verbosity, --logtostderr, --alsologtostderr, ...) keep their
meaning: this module changes where a screen line goes, never which records are logged.
"""

from __future__ import annotations

import atexit
import io
import logging as py_logging
import sys
import threading
from typing import Any

import jax
import tqdm
from absl import logging

# `extra={SHOWN_ON_BAR: True}` on a log record: its content is on the live bar already.
SHOWN_ON_BAR = "jaxlab_shown_on_bar"


def is_live() -> bool:
    """A live bar only for a person watching: stderr is a terminal, and on process 0 only."""
    return sys.stderr.isatty() and jax.process_index() == 0


class _AboveBars(io.TextIOBase):
    """A text stream whose finished lines are printed above the live bars on `screen`."""

    def __init__(self, screen: Any):
        self.screen = screen
        self._partial = ""
        self._lock = threading.Lock()

    def write(self, text: str) -> int:
        with self._lock:
            lines = (self._partial + text).split("\n")
            self._partial = lines.pop()  # "" after a newline
        if lines:
            tqdm.tqdm.write("\n".join(lines), file=self.screen)
        return len(text)

    def flush(self) -> None:
        self.screen.flush()

    def finish(self) -> None:
        """Prints a last unfinished line (the bars are about to close)."""
        with self._lock:
            partial, self._partial = self._partial, ""
        if partial:
            tqdm.tqdm.write(partial, file=self.screen)

    def isatty(self) -> bool:
        return self.screen.isatty()

    def fileno(self) -> int:
        return self.screen.fileno()

    @property
    def encoding(self) -> str:
        return getattr(self.screen, "encoding", "utf-8")


class _OffScreen(py_logging.Filter):
    """Drops records whose content a live bar shows (the handler writes to the screen only)."""

    def filter(self, record: py_logging.LogRecord) -> bool:
        return not getattr(record, SHOWN_ON_BAR, False)


class _Terminal:
    """The open bars and the streams that were replaced while they are open."""

    def __init__(self) -> None:
        self.bars: list[tqdm.tqdm] = []
        self.screen: Any = None  # the terminal (sys.stderr before the first bar)
        self.above: _AboveBars | None = None
        self.absl_stream_replaced = False
        self.off_screen = _OffScreen()
        self.atexit_registered = False

    def redirect(self) -> None:
        """Points sys.stderr and absl's handler (when it writes to the terminal) above the bars."""
        self.screen = sys.stderr
        self.above = _AboveBars(self.screen)
        sys.stderr = self.above
        absl_handler = logging.get_absl_handler()
        python_handler = absl_handler.python_handler
        self.absl_stream_replaced = python_handler.stream is self.screen
        if self.absl_stream_replaced:
            python_handler.stream = self.above
            absl_handler.addFilter(self.off_screen)  # no log file: the screen is the only copy
        if not self.atexit_registered:
            atexit.register(close_all)
            self.atexit_registered = True

    def restore(self) -> None:
        """Puts back what `redirect` replaced."""
        if self.above is None:
            return
        self.above.finish()
        if sys.stderr is self.above:
            sys.stderr = self.screen
        absl_handler = logging.get_absl_handler()
        if self.absl_stream_replaced and absl_handler.python_handler.stream is self.above:
            absl_handler.python_handler.stream = self.screen
        absl_handler.removeFilter(self.off_screen)
        self.above = self.screen = None
        self.absl_stream_replaced = False


_TERMINAL = _Terminal()


def open_bar(**tqdm_args: Any) -> tqdm.tqdm:
    """A tqdm bar on the terminal; the first open bar routes stderr and absl's log above it.

    Call only when `is_live()`. Close it with `close_bar` (also on errors): the last close puts
    the streams back. A bar opened while another is open (an evaluation inside training) is
    drawn below it and removed when closed; the first stays on screen, finished.
    """
    if not _TERMINAL.bars:
        _TERMINAL.redirect()
    tqdm_args.setdefault("dynamic_ncols", True)
    tqdm_args.setdefault("leave", not _TERMINAL.bars)  # a bar inside another's job goes away
    bar = tqdm.tqdm(file=_TERMINAL.screen, **tqdm_args)
    _TERMINAL.bars.append(bar)
    return bar


def close_bar(bar: tqdm.tqdm) -> None:
    """Closes `bar` (kept on screen, finished); after the last one, restores the streams."""
    if bar not in _TERMINAL.bars:
        return
    bar.close()
    _TERMINAL.bars.remove(bar)
    if not _TERMINAL.bars:
        _TERMINAL.restore()


def close_all() -> None:
    """Closes every open bar (at exit, so the shell's prompt starts on its own line)."""
    for bar in list(_TERMINAL.bars):
        close_bar(bar)


def bars_open() -> int:
    return len(_TERMINAL.bars)
