"""The live bar and the log in a real pseudo-terminal (issue 28 item 1).

The program runs in a subprocess whose stdout and stderr are the slave side of `os.openpty()`
(160 x 40, as a person's terminal); the bytes read from the master side are played on a minimal
terminal (carriage return, newline, cursor up, autowrap). A log record that starts anywhere but
column 0 of an empty line started on a bar's line: the collision of the issue,
`... ETA 0:00:00]I1204 22:04:39.637062 ...`. Off a terminal the same program prints plain lines.
"""

import fcntl
import os
import re
import select
import struct
import subprocess
import sys
import termios

import pytest

from tests.core import scripts_util

REPO = scripts_util.REPO
WIDTH, HEIGHT = 160, 40
RECORD = re.compile(r"[IWEF]\d{4} \d\d:\d\d:\d\d\.\d{6} +\d+ [\w.]+:\d+\] ")
TOKEN = re.compile(r"\x1b\[(\d*)([A-Za-z])|\r|\n")

# A loop as the tasks' train.py write it (Progress + MetricWriter), with log records, a stderr
# line written in two pieces, a multi-line warning and an inner bar between the reports.
PROGRAM = """
import sys, tempfile
from absl import app, logging
from jaxlab.core import loop, writer as writer_lib

def main(argv):
    progress = loop.Progress(total_steps=40, global_batch_size=8)
    with writer_lib.MetricWriter(tempfile.mkdtemp()) as writer:
        for step in range(10, 41, 10):
            scalars = {"loss": 1.0 / step, "accuracy": step / 40}
            scalars.update(progress.report(step, scalars))
            writer.write_scalars(step, scalars, shown_on_bar=progress.live)
            logging.info("evaluated at step %d", step)
            sys.stderr.write("a line written ")
            sys.stderr.write("in two pieces\\n")
            logging.warning("first line\\nsecond line")
            if step == 20:  # a bar inside the job's: drawn below it, gone when done
                for item in loop.progress_bar(range(3), desc="inner"):
                    logging.info("inner item %d", item)
    progress.close()
    logging.info("done")

app.run(main)
"""


def run_in_terminal(command: list[str], timeout: float = 600) -> str:
    """Runs `command` with a 160 x 40 pseudo-terminal as stdin, stdout and stderr; its output."""
    master, slave = os.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", HEIGHT, WIDTH, 0, 0))
    env = dict(os.environ, JAX_PLATFORMS="cpu", COLUMNS=str(WIDTH), LINES=str(HEIGHT))
    process = subprocess.Popen(
        command, stdin=slave, stdout=slave, stderr=slave, cwd=REPO, env=env, close_fds=True
    )
    os.close(slave)
    chunks = []
    try:
        while True:
            ready, _, _ = select.select([master], [], [], 1.0)
            if ready:
                try:
                    data = os.read(master, 1 << 16)
                except OSError:  # EIO: the slave side closed (the process exited)
                    break
                if not data:
                    break
                chunks.append(data)
            elif process.poll() is not None:
                break
        process.wait(timeout=timeout)
    finally:
        os.close(master)
        if process.poll() is None:
            process.kill()
    output = b"".join(chunks).decode("utf-8", "replace")
    assert process.returncode == 0, output[-3000:]
    return output


def play(output: str) -> tuple[list[str], list[str]]:
    """(screen lines, problems): `output` played on a WIDTH-column terminal; a problem is a log
    record that started at a column other than 0 or on a line that still held other text."""
    lines: list[list[str]] = [[]]
    row = col = 0
    problems = []

    def put(text: str) -> None:
        nonlocal row, col
        for ch in text:
            if col >= WIDTH:  # autowrap, as a terminal does
                row, col = row + 1, 0
            while len(lines) <= row:
                lines.append([])
            line = lines[row]
            line.extend(" " * (col + 1 - len(line)))
            line[col] = ch
            col += 1

    position = 0
    for match in [*TOKEN.finditer(output), None]:
        text = output[position : match.start() if match else len(output)]
        for record in RECORD.finditer(text):
            before = text[: record.start()]
            put(before)
            line = "".join(lines[row]) if row < len(lines) else ""
            if col != 0 or line.strip():
                problems.append(f"record at column {col} of {line.rstrip()!r}: {record.group()}")
            text = text[record.start() :]
            put(text[: record.end() - record.start()])
            text = text[record.end() - record.start() :]
        put(text)
        if match is None:
            break
        position = match.end()
        if match.group() == "\r":
            col = 0
        elif match.group() == "\n":
            row += 1
        elif match.group(2) == "A":
            row = max(0, row - int(match.group(1) or 1))
        elif match.group(2) == "B":
            row += int(match.group(1) or 1)
        elif match.group(2) == "K":
            while len(lines) <= row:
                lines.append([])
            del lines[row][col:]
    return ["".join(line).rstrip() for line in lines], problems


def test_play_finds_the_collision_of_the_issue():
    """The checker itself: the issue's output is a problem, tqdm.write's clear-then-print is not."""
    bar = "\rtrain:  50%|#####     | 300/600 [00:02, loss 0.01196 | ETA 0:00:00]"
    record = "I1204 22:04:39.637062 140 writer.py:143] step 300 | loss 0.01196\n"
    _, problems = play(bar + record)
    assert len(problems) == 1 and f"record at column {len(bar) - 1} of" in problems[0]
    screen, problems = play(bar + "\r" + " " * WIDTH + "\r" + record + bar)
    assert problems == [] and screen[0].startswith("I1204") and screen[1].startswith("train:")


def test_bar_and_log_lines_in_a_terminal():
    output = run_in_terminal([sys.executable, "-c", PROGRAM])
    screen, problems = play(output)
    assert problems == [], "\n".join(problems + screen)
    bars = [line for line in screen if "%|" in line]
    assert len(bars) == 1, screen  # one bar, redrawn in place; the inner one removed
    assert sum("inner item" in line for line in screen) == 3
    assert "40/40" in bars[0] and "loss 0.025 |" in bars[0] and "| accuracy 1]" in bars[0]
    assert sum("evaluated at step" in line for line in screen) == 4
    assert sum(line.endswith("a line written in two pieces") for line in screen) == 4
    assert sum(line == "second line" for line in screen) == 4
    # The step's metrics are on the bar; the writer's line of them is not printed a second time.
    assert not any(re.search(r"step \d+ \| loss", line) for line in screen), screen
    assert screen.index(bars[0]) < max(i for i, s in enumerate(screen) if "] done" in s)


def test_absl_verbosity_still_applies_in_a_terminal():
    output = run_in_terminal([sys.executable, "-c", PROGRAM, "--verbosity=-1"])
    screen, problems = play(output)
    assert problems == [] and not any("evaluated at step" in line for line in screen)
    assert sum(line == "second line" for line in screen) == 4  # warnings still shown


def test_plain_lines_off_a_terminal():
    result = subprocess.run(
        [sys.executable, "-c", PROGRAM],
        capture_output=True,
        text=True,
        cwd=REPO,
        env=dict(os.environ, JAX_PLATFORMS="cpu"),
        timeout=600,
    )
    assert result.returncode == 0, result.stderr
    assert "\r" not in result.stderr and "%|" not in result.stderr
    assert "step 40/40 (100%) | loss 0.025 | " in result.stderr  # the progress line, as before
    assert re.search(r"\] step 40 \| loss 0.0250 \| accuracy 1.0000", result.stderr)


@pytest.mark.slow
def test_jaxlab_train_in_a_terminal(tmp_path):
    """The issue's case: `jaxlab train` in a 160 x 40 terminal: one bar with the step's metrics,
    every log line (config, evaluation, checkpoints) on its own line above it."""
    jaxlab = os.path.join(os.path.dirname(sys.executable), "jaxlab")
    command = [jaxlab, "train", "--config=example:tiny", f"--workdir={tmp_path / 'run'}"]
    output = run_in_terminal([*command, "--config.train.num_steps=40"])
    screen, problems = play(output)
    assert problems == [], "\n".join(problems + screen)
    bars = [line for line in screen if line.startswith("train:") and "%|" in line]
    assert len(bars) == 1 and "40/40" in bars[0], screen
    assert all(word in bars[0] for word in ("loss ", "steps/s", "ETA", "grad_norm ", "lr "))
    assert any(re.search(r"\] step 40 \| eval_mse \d", line) for line in screen)
    assert not any(re.search(r"\] step \d+ \| data_checksum", line) for line in screen)
