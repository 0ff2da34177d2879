"""Runs the absl binaries in subprocesses, as a user (or a cluster launcher) would."""

from __future__ import annotations

import os
import pathlib
import re
import subprocess
import sys

from tests.conftest import TEST_XLA_FLAGS

REPO = pathlib.Path(__file__).resolve().parents[2]


def script_env(num_devices: int, **extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env["XLA_FLAGS"] = f"{TEST_XLA_FLAGS} --xla_force_host_platform_device_count={num_devices}"
    env["JAX_PLATFORMS"] = "cpu"
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra)
    return env


def command(script: str, config: str, workdir: str, *overrides: str) -> list[str]:
    return [
        sys.executable,
        str(REPO / "scripts" / script),
        f"--config={REPO / 'jaxlab' / 'configs' / config}",
        f"--workdir={workdir}",
        *overrides,
    ]


def run_python(args: list[str], num_devices: int, timeout: int = 600, **env):
    """`python <args>` from the repository root with `script_env(num_devices, **env)`, run to
    completion; returns the CompletedProcess (stdout+stderr in .stdout)."""
    return subprocess.run(
        [sys.executable, *args],
        env=script_env(num_devices, **env),
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=timeout,
        check=False,
    )


def run(script: str, config: str, workdir: str, *overrides: str, num_devices: int = 8, **env):
    """Runs to completion; returns the CompletedProcess (stdout+stderr in .stdout)."""
    return subprocess.run(
        command(script, config, workdir, *overrides),
        env=script_env(num_devices, **env),
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=600,
        check=False,
    )


def start(script: str, config: str, workdir: str, *overrides: str, num_devices: int = 8, **env):
    """Starts without waiting; the caller signals / waits on the Popen."""
    return subprocess.Popen(
        command(script, config, workdir, *overrides),
        env=script_env(num_devices, **env),
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def rerun_test_with_xla_flags(request, xla_flags: str) -> bool:
    """Runs the calling test again in a pytest process of its own whose `TEST_XLA_FLAGS` are
    `xla_flags` (8 fake devices, as every test process), and asserts it passed there. Returns
    True in the calling process, where the test then returns; False where the flags already are
    `xla_flags` (inside that process, or a whole suite run with them), where the test goes on.

    For a comparison that holds only under particular compiler flags (two differently built
    programs agreeing bit for bit), where the suite's own flags compile for speed."""
    if xla_flags == TEST_XLA_FLAGS:
        return False
    pytest_args = ["-m", "pytest", "-q", "-p", "no:cacheprovider", request.node.nodeid]
    # XLA_FLAGS empty: the subprocess's conftest sets them (its flags and 8 fake devices).
    result = run_python(pytest_args, 8, timeout=900, XLA_FLAGS="", JAXLAB_TEST_XLA_FLAGS=xla_flags)
    passed = re.search(r"^1 passed", result.stdout, re.MULTILINE)
    assert result.returncode == 0 and passed, result.stdout[-6000:]
    return True
