"""`jaxlab bench --input_pipeline`: the demand against independent arithmetic, memory sampling of
child processes, and a tiny end-to-end report of the example task read by worker processes."""

import json
import os
import subprocess
import sys
import time

import numpy as np
import pytest

from jaxlab.cli import bench_input
from tests.core import scripts_util


def test_demand_is_the_assumed_mfu_of_the_h100_peak_over_flops_per_record():
    glitch = bench_input.demand("glitch", 422e9)
    assert glitch["assumed_mfu"] == 0.40
    np.testing.assert_allclose(glitch["h100_records_per_sec"], 0.4 * 989e12 / 422e9)  # ~937
    neutrino = bench_input.demand("neutrino", 236e6)  # a small model: 10% MFU
    np.testing.assert_allclose(neutrino["h100_records_per_sec"], 0.1 * 989e12 / 236e6)
    assert bench_input.demand("example", None)["h100_records_per_sec"] is None


def test_records_and_cores():
    packs = {"event_valid": np.array([[1, 1, 0], [1, 0, 0]], bool), "x": np.zeros((2, 3))}
    assert bench_input.records_in("neutrino", packs) == 3  # events, not packs
    assert bench_input.records_in("glitch", {"image": np.zeros((5, 2))}) == 5
    assert bench_input.cores_used(workers=0, num_threads=2, cpus=12) == 2
    assert bench_input.cores_used(workers=8, num_threads=2, cpus=4) == 4
    assert bench_input.cores_used(workers=1, num_threads=2, cpus=4) == 1


def test_rss_sampler_sees_a_child_process_peak():
    # A child that holds ~200 MB for a moment, then frees it and idles: the peak is kept.
    code = (
        "import time, numpy as np; a = np.ones(25_000_000); time.sleep(1.5); del a; time.sleep(1)"
    )
    with bench_input.RssSampler() as sampler:
        subprocess.run([sys.executable, "-c", code], check=True)
        main, children = sampler.peaks()
    assert main >= bench_input._rss_bytes(os.getpid()) * 0.5
    assert children and max(children.values()) > 180e6, children


def test_cpu_seconds_follow_this_process():
    start, process_start = bench_input.reader_cpu_seconds(), time.process_time()
    total = 0
    while time.process_time() - process_start < 0.5:  # busy: half a CPU-second
        total += sum(range(1000))
    used = bench_input.reader_cpu_seconds() - start
    np.testing.assert_allclose(used, time.process_time() - process_start, atol=0.05)


@pytest.mark.slow  # starts worker processes three times on the tiny example config
def test_tiny_input_report_of_the_example_task(tmp_path):
    out = tmp_path / "input.json"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "jaxlab.cli",
            "bench",
            "--input_pipeline",
            "--input_tiny",
            "--input_tasks=example",
            "--input_seconds=0.5",
            "--input_workers=2",
            f"--input_workdir={tmp_path / 'work'}",
            f"--out={out}",
        ],
        env=scripts_util.script_env(1),
        cwd=scripts_util.REPO,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    report = json.loads(out.read_text())["input"]
    assert report["cpu_model"] and report["workers_n"] == 2
    entry = report["tasks"]["example"]
    runs = entry["runs"]
    assert set(runs) == {"n1_w0", "n1_w1", "n1_w2", "n2_w2"}  # sizes N and 2N (tiny)
    batch = entry["global_batch_size"]
    for run in runs.values():
        assert run["records_per_sec"] > 0 and run["first_batch_s"] > 0
        assert run["records_per_batch"] == batch  # whole batches of the config's size
        assert run["records_per_cpu_second"] > 0
    for key in ("n1_w1", "n1_w2", "n2_w2"):  # a worker's own peak, a live Python process
        assert 20e6 < runs[key]["worker_peak_rss_bytes"] < 4e9
    assert len(runs["n1_w2"]["worker_peak_rss_each_bytes"]) == 2
    assert entry["workers_used"] and runs["n1_w2"]["iterator_workers"] == 2
    flops = entry["flops"]
    np.testing.assert_allclose(
        flops["flops_per_record"], flops["flops_per_step"] / flops["records_per_step"]
    )
    np.testing.assert_allclose(
        entry["delivered_over_needed"],
        entry["records_per_sec_n_workers"] / (0.1 * 989e12 / flops["flops_per_record"]),
    )
    assert "example" in result.stdout and "H100 needs" in result.stdout
    assert os.listdir(tmp_path / "work" / "example")  # the data went into the bench folder
