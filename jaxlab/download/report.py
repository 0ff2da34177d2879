"""What a download tells the user: sizes in words, announcements, a progress line or bar."""

from __future__ import annotations

import sys
import threading
import time


def human_bytes(n: float | None) -> str:
    if n is None:
        return "unknown size"
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    raise AssertionError("unreachable")


def say(message: str) -> None:
    """Announcements and summaries go to stdout: they are the command's output."""
    print(message, flush=True)


class Progress:
    """Bytes, bytes/s and ETA: tqdm when installed, else a log line every `every_s` seconds."""

    def __init__(self, total: int | None, desc: str, enabled: bool, every_s: float = 10.0):
        self.total, self.desc, self.enabled, self.every_s = total, desc, enabled, every_s
        self.done, self.start, self.last = 0, time.monotonic(), time.monotonic()
        self.lock = threading.Lock()  # several files are fetched at a time
        self.bar = None
        if enabled:
            try:
                import tqdm  # optional: a nicer bar when present

                self.bar = tqdm.tqdm(
                    total=total, desc=desc, unit="B", unit_scale=True, unit_divisor=1000
                )
            except ImportError:
                self.bar = None

    def update(self, n: int) -> None:
        with self.lock:
            self.done += n
            if self.bar is not None:
                self.bar.update(n)
            elif self.enabled and time.monotonic() - self.last >= self.every_s:
                self.last = time.monotonic()
                self.log()

    def log(self) -> None:
        elapsed = max(time.monotonic() - self.start, 1e-9)
        rate = self.done / elapsed
        line = f"{self.desc}: {human_bytes(self.done)}"
        if self.total:
            eta = (self.total - self.done) / rate if rate > 0 else float("inf")
            line += f" / {human_bytes(self.total)} ({100 * self.done / self.total:.0f}%)"
            line += f", {human_bytes(rate)}/s, ETA {eta:.0f} s"
        else:
            line += f", {human_bytes(rate)}/s"
        print(line, file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        elif self.enabled and self.done:
            self.log()
