"""loop.Progress and loop.progress_bar: rates that leave compile time out, log lines off a tty."""

import logging

import pytest

from jaxlab.core import loop


class _Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def test_rates_start_at_the_first_report(monkeypatch):
    """Steps before the first report include compilation: they must not enter any rate."""
    clock = _Clock()
    monkeypatch.setattr(loop.time, "perf_counter", clock)
    progress = loop.Progress(total_steps=100, global_batch_size=32, start_step=40)
    clock.now = 30.0  # 30 s of compile and restore for the first 10 steps
    assert progress.report(50, {"loss": 1.0}) == {}  # no rate yet
    clock.now = 32.0
    rates = progress.report(60, {"loss": 0.5})
    assert rates["steps_per_sec"] == pytest.approx(5.0)  # 10 steps in 2 s, not 20 in 32
    assert rates["examples_per_sec"] == pytest.approx(160.0)
    clock.now = 36.0
    assert progress.report(70)["steps_per_sec"] == pytest.approx(2.5)


def test_progress_logs_lines_off_a_tty(caplog, monkeypatch):
    monkeypatch.setattr(loop, "_is_live", lambda: False)
    caplog.set_level(logging.INFO)
    progress = loop.Progress(total_steps=10, global_batch_size=4)
    progress.report(5, {"loss": 0.25})
    progress.report(10, {"loss": 0.125})
    assert "step 5/10 (50%) | loss 0.25 | ETA ?" in caplog.text
    assert "step 10/10 (100%) | loss 0.125 | " in caplog.text and "steps/s" in caplog.text


def test_progress_bar_yields_everything_and_logs_the_end(caplog, monkeypatch):
    monkeypatch.setattr(loop, "_is_live", lambda: False)
    caplog.set_level(logging.INFO)
    assert list(loop.progress_bar(range(7), desc="cubes")) == list(range(7))
    assert "cubes 7/7 (100%)" in caplog.text
    assert list(loop.progress_bar(iter("ab"), desc="files")) == ["a", "b"]
    assert "files 2 |" in caplog.text


def test_progress_bar_uses_tqdm_on_a_tty(monkeypatch, capsys):
    monkeypatch.setattr(loop, "_is_live", lambda: True)
    assert list(loop.progress_bar([1, 2, 3], desc="eval")) == [1, 2, 3]
    assert "eval: 100%" in capsys.readouterr().err
