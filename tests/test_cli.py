"""The `jaxlab` command: config names and variants, one-line errors, recorded configs, and (slow)
the built wheel installed into a fresh venv outside the repository, trained and evaluated there."""

import csv
import importlib.util
import json
import os
import pathlib
import subprocess
import sys
import venv

import ml_collections
import numpy as np
import pytest

from jaxlab import download as download_lib
from jaxlab.cli import commands as cli
from jaxlab.core import config as config_lib
from tests.core import scripts_util

REPO = scripts_util.REPO


@pytest.mark.parametrize("name", config_lib.config_names())
def test_declared_variants_are_exactly_the_ones_get_config_accepts(name):
    file = config_lib.CONFIG_PACKAGE / f"{name}.py"
    variants = config_lib.config_variants(file)
    assert variants[0] == "demo" and "tiny" in variants
    for variant in variants:  # each parsed name loads ...
        assert config_lib.load_config(f"{name}:{variant}").task == f"jaxlab.{name}"
    with pytest.raises(FileNotFoundError, match=r"unknown variant 'nope'; its variants are: demo"):
        config_lib.load_config(f"{name}:nope")
    spec = importlib.util.spec_from_file_location(f"_config_{name}", file)  # ... get_config
    loaded = importlib.util.module_from_spec(spec)  # itself rejects a name the parser missed
    spec.loader.exec_module(loaded)
    with pytest.raises(ValueError, match="unknown variant"):
        loaded.get_config("nope")


def test_config_names_resolve_from_any_cwd(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    file, variant = config_lib.config_file("example:tiny")
    assert file == REPO / "jaxlab" / "configs" / "example.py" and variant == "tiny"
    with pytest.raises(FileNotFoundError, match=r"Unknown config 'exmple'; the configs are: ex"):
        config_lib.config_file("exmple:tiny")
    with pytest.raises(FileNotFoundError, match=r"mine\.py does not exist \(packaged configs"):
        config_lib.config_file("mine.py:demo")


def test_unknown_key_names_the_key_and_its_siblings():
    argv = ["jaxlab", "--config=example:tiny", "--config.optim.lr=1", "--config.train.nope=3"]
    message = config_lib._unknown_key(argv)
    assert message.startswith("unknown config key 'train.nope'. train has: ")
    assert "num_steps" in message
    assert config_lib._unknown_key(["jaxlab", "--config=example:tiny", "--config.seed=1"]) is None


def test_top_help_lists_commands_configs_variants_and_flags(capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["jaxlab", "--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    for command in cli.COMMANDS:
        assert f"\n  {command} " in text
    for name in config_lib.config_names():
        assert f"\n  {name} " in text
    assert "vit_b16_multiview_bf16" in text and "unet_cropped" in text  # variants
    assert "--config.KEY=VALUE" in text and "--workdir=DIR" in text


def _jaxlab(*args: str) -> int:
    """Runs `jaxlab ARGS` in this process; its exit status."""
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["jaxlab", *args])
    return exit_info.value.code or 0


def _read_csv(path: pathlib.Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def example_run(tmp_path_factory):
    from jaxlab.example import train

    config = config_lib.load_config("example:tiny")
    workdir = tmp_path_factory.mktemp("example_run")
    train.train_and_evaluate(config, str(workdir))
    return config, workdir


def test_export_then_predict_from_bundle_and_workdir_give_the_same_csv(
    example_run, tmp_path, capsys
):
    config, workdir = example_run
    bundle = tmp_path / "bundle"
    assert _jaxlab("export", f"--workdir={workdir}", f"--out={bundle}", "--checkpoint=latest") == 0
    listed = capsys.readouterr().out.split()
    assert sorted(listed) == sorted(str(bundle / name) for name in os.listdir(bundle))
    info = json.loads((bundle / "bundle.json").read_text())
    assert info["task"] == "jaxlab.example" and info["checkpoint_step"] == config.train.num_steps

    x = np.random.default_rng(3).normal(size=(23, config.data.num_features)).astype(np.float32)
    inputs = tmp_path / "new.npz"
    np.savez(inputs, x=x)
    outputs = {}
    for name, model in (("bundle", bundle), ("workdir", workdir)):
        out = tmp_path / f"predict_{name}"
        args = [f"--model={model}", f"--input={inputs}", f"--out={out}", "batch_size=8"]
        assert _jaxlab("predict", *args) == 0
        assert capsys.readouterr().out.split() == [str(out / "predictions.csv")]
        outputs[name] = (out / "predictions.csv").read_bytes()
    assert outputs["bundle"] == outputs["workdir"]  # bitwise: same params, same batches
    rows = _read_csv(tmp_path / "predict_bundle" / "predictions.csv")
    assert [int(r["index"]) for r in rows] == list(range(23))
    predictions = np.array([float(r["prediction"]) for r in rows])
    assert np.isfinite(predictions).all() and np.ptp(predictions) > 0  # not a constant

    # A task option reaches predict as a string and is checked there: one line, exit 1.
    args = [f"--model={bundle}", f"--input={inputs}", f"--out={tmp_path / 'bad'}", "batch_size=0"]
    assert _jaxlab("predict", *args) == 1
    err = capsys.readouterr().err
    assert "ValueError: predict option batch_size='0': expected a positive integer" in err
    assert err.count("\n") == 1 and "Traceback" not in err

    # evaluate --model=BUNDLE: the task's own evaluation on the bundle's parameters, data and
    # outputs in another folder, equal to evaluating the same checkpoint of the workdir.
    from jaxlab.example import evaluate

    latest = config.copy_and_resolve_references()
    latest.eval.checkpoint = "latest"
    expected = evaluate.evaluate(latest, str(workdir))
    other = tmp_path / "evaluate_bundle"
    assert _jaxlab("evaluate", f"--model={bundle}", f"--workdir={other}") == 0
    got = json.loads((other / "eval" / "eval" / "metrics.json").read_text())
    assert (
        got["eval_mse"] == expected["eval_mse"]
        and got["checkpoint_step"] == info["checkpoint_step"]
    )
    assert _jaxlab("evaluate", f"--model={workdir}", f"--workdir={other}") == 1
    assert "not an exported bundle" in capsys.readouterr().err


def test_predict_for_a_task_without_predict_py_is_one_line_exit_2(tmp_path, monkeypatch, capsys):
    package = tmp_path / "src" / "no_predict_task"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("")
    monkeypatch.syspath_prepend(str(tmp_path / "src"))
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text(json.dumps({"task": "no_predict_task"}))
    args = [f"--model={model}", f"--input={tmp_path / 'x.npz'}", f"--out={tmp_path / 'out'}"]
    assert _jaxlab("predict", *args) == cli.NOT_YET
    err = capsys.readouterr().err
    assert (
        err.startswith("jaxlab predict: no_predict_task has no predict.py") and err.count("\n") == 1
    )


def test_download_maps_options_to_the_downloaders_types(tmp_path, monkeypatch, capsys):
    from jaxlab import download

    calls = []
    monkeypatch.setattr(download, "download", lambda *a, **k: calls.append((a, k)))
    to = str(tmp_path / "hrrr")
    args = ["start=2024-06-01", "init_hours=0-23", "forecast_hours=0", "retries=2"]
    assert _jaxlab("download", "hrrr", f"--to={to}", *args, "backoff_s=0.5", "progress=false") == 0
    assert calls.pop() == (
        ("hrrr", to),
        {
            "start": "2024-06-01",
            "init_hours": "0-23",
            "forecast_hours": 0,
            "retries": 2,
            "backoff_s": 0.5,
            "progress": False,
        },
    )
    assert _jaxlab("download", "greenearthnet", f"--to={to}", "limit=20", "etag_md5=no") == 0
    assert calls.pop()[1] == {"limit": 20, "etag_md5": False}
    assert _jaxlab("download", "gravityspy", f"--to={to}", "pngs=maybe") == 1
    assert "ValueError: option pngs='maybe': expected true or false" in capsys.readouterr().err
    assert not calls


@pytest.mark.parametrize(
    "error",
    [
        download_lib.DownloadError("https://x/y.h5: HTTP 404 (not found)."),
        ValueError("unknown dataset 'hrr'; choose one of hrrr, gravityspy"),
        TypeError("hrrr: unknown options ['colour']."),
    ],
    ids=lambda e: type(e).__name__,
)
def test_download_errors_are_one_line_exit_1(error, tmp_path, monkeypatch, capsys):
    def fail(*args, **kwargs):
        raise error

    monkeypatch.setattr(download_lib, "download", fail)
    assert _jaxlab("download", "hrrr", f"--to={tmp_path}", f"--log_dir={tmp_path}") == 1
    err = capsys.readouterr().err
    assert err.startswith(f"jaxlab download: {type(error).__name__}: {error} (traceback in ")
    assert err.count("\n") == 1 and "Traceback" not in err
    log_file = err.partition("(traceback in ")[2].partition(";")[0]
    assert pathlib.Path(log_file).parent == tmp_path
    assert "Traceback (most recent call last)" in pathlib.Path(log_file).read_text()


def test_verbose_prints_the_traceback(tmp_path, monkeypatch, capsys):
    def fail(*args, **kwargs):
        raise download_lib.DownloadError("/data: disk full")

    monkeypatch.setattr(download_lib, "download", fail)
    assert _jaxlab("download", "olist", f"--to={tmp_path}", f"--log_dir={tmp_path}", "--verbose")
    err = capsys.readouterr().err
    assert "Traceback (most recent call last)" in err and "in fail" in err
    assert err.splitlines()[-1].startswith("jaxlab download: DownloadError: /data: disk full")


def test_check_data_says_when_a_task_has_no_check(capsys):
    assert _jaxlab("check-data", "--config=example:tiny") == cli.NOT_YET
    assert capsys.readouterr().err == "jaxlab check-data: not available for jaxlab.example yet.\n"


def _recorded(config: ml_collections.ConfigDict) -> dict:
    return json.loads(config.to_json())


def test_recorded_config_wins_and_conflicting_overrides_are_named():
    trained = config_lib.load_config("example:tiny")
    trained.train.num_steps = 12
    trained.model.hidden = (8, 4)
    trained.mesh = [("data", 2)]
    given = config_lib.load_config("example:demo")  # a different variant, as --config gives it
    given.eval.checkpoint = "latest"  # explicit: eval keys may differ
    given.optim.lr = 0.5  # explicit and trained otherwise: a conflict
    conflicts = config_lib.merge_recorded(
        given, _recorded(trained), ["eval.checkpoint", "optim.lr"]
    )
    assert conflicts == [("optim.lr", trained.optim.lr, 0.5)]
    assert given.train.num_steps == 12 and given.data.num_train == trained.data.num_train
    assert given.model.hidden == (8, 4)  # a tuple again, not JSON's list
    assert given.mesh == [("data", 2)]
    assert given.eval.checkpoint == "latest"
    assert config_lib.merge_recorded(given, _recorded(given), ["optim.lr"]) == []


def _cli(*args: str, cwd, python=sys.executable, num_devices=2):
    return subprocess.run(
        [python, "-m", "jaxlab.cli", *args],
        env=scripts_util.script_env(num_devices),
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )


@pytest.mark.slow
def test_config_errors_are_one_line_without_traceback(tmp_path):
    cases = [
        ("--config=wether:demo", "Unknown config 'wether'; the configs are: example, glitch"),
        ("--config=weather:nope", "unknown variant 'nope'; its variants are: demo, tiny"),
        ("--config=./mine.py", "mine.py does not exist (packaged configs: example"),
        ("--config.train.nope=1", "unknown config key 'train.nope'. train has: "),
        ("--config.train.num_steps=abc", "--config.train.num_steps=abc: invalid literal"),
    ]
    for arg, expected in cases:
        args = ["--config=weather:demo", arg] if arg.startswith("--config.") else [arg]
        result = _cli("show-config", *args, cwd=tmp_path)
        assert result.returncode == 1, (arg, result.stderr)
        assert expected in result.stderr, (arg, result.stderr)
        assert "Traceback" not in result.stderr and result.stderr.count("\n") == 1, result.stderr

    shown = _cli("show-config", "--config=weather:demo", "--config.train.num_steps=7", cwd=tmp_path)
    assert shown.returncode == 0, shown.stderr
    assert "train.num_steps = 7\n" in shown.stdout and "data.shape = (32, 48)\n" in shown.stdout


def _site_packages(python: str) -> str:
    code = "import sysconfig; print(sysconfig.get_paths()['purelib'])"
    return subprocess.run([python, "-c", code], capture_output=True, text=True).stdout.strip()


@pytest.mark.slow
def test_wheel_installs_and_runs_outside_the_repository(tmp_path):
    """Wheel -> fresh venv in tmp -> `jaxlab train` and `evaluate` from a cwd outside the repo.

    The venv reuses the dependencies of the running environment (a .pth line to its
    site-packages; editable installs there are not activated by it), so nothing is downloaded.
    """
    from tensorboard.backend.event_processing import event_accumulator
    from tensorboard.plugins.hparams import plugin_data_pb2

    source = tmp_path / "src"  # a copy: building in the checkout would write build/ there
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        (source / name).write_bytes((REPO / name).read_bytes())
    subprocess.run(
        ["cp", "-r", str(REPO / "jaxlab"), str(source / "jaxlab")], check=True, timeout=60
    )
    wheels = tmp_path / "wheels"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "-w", wheels, source],
        check=True,
        timeout=600,
    )
    (wheel,) = wheels.glob("jaxlab-*.whl")
    env_dir = tmp_path / "venv"
    venv.create(env_dir)  # no pip of its own: the running pip installs into it (`--python`)
    python = str(env_dir / "bin" / "python")
    own_site = pathlib.Path(_site_packages(python))
    (own_site / "_deps.pth").write_text(_site_packages(sys.executable) + "\n")
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "--python",
            python,
            "install",
            "--quiet",
            "--no-deps",
            str(wheel),
        ],
        check=True,
        timeout=600,
    )
    jaxlab = str(env_dir / "bin" / "jaxlab")
    cwd = tmp_path / "elsewhere"
    cwd.mkdir()
    env = scripts_util.script_env(2)
    env.pop("PYTHONPATH", None)

    def run(*args):
        return subprocess.run(
            [jaxlab, *args], env=env, cwd=cwd, capture_output=True, text=True, timeout=600
        )

    workdir = tmp_path / "run"
    trained = run("train", "--config=example:tiny", f"--workdir={workdir}")
    assert trained.returncode == 0, trained.stderr[-3000:]
    # The checkpoint module's deliberate override of orbax's array handler is not announced.
    assert "overriding" not in trained.stderr, trained.stderr[:3000]
    evaluated = run("evaluate", f"--workdir={workdir}")  # the recorded config: no --config
    assert evaluated.returncode == 0, evaluated.stderr[-3000:]
    shown = run("show-config", "--config=example:tiny")
    assert shown.stdout.startswith(f"# example:tiny ({own_site / 'jaxlab' / 'configs'}")

    records = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    final_eval = [r for r in records if "eval_mse" in r][-1]
    assert final_eval["step"] == 20
    info = json.loads((workdir / "run_info.json").read_text())
    assert info["package_dir"] == str(own_site / "jaxlab")  # the installed package ran
    assert info["git"] is None and info["config"] == "example:tiny"
    assert info["device_count"] == 2 and info["backend"] == "cpu"
    eval_metrics = json.loads((workdir / "eval" / "eval" / "metrics.json").read_text())

    # TensorBoard: scalars, the evaluation's figure, hparams with the final metric's value.
    accumulator = event_accumulator.EventAccumulator(
        str(workdir / "tb"), size_guidance={event_accumulator.IMAGES: 0}
    )
    accumulator.Reload()
    tags = accumulator.Tags()
    assert {"loss", "eval_mse", "final/eval_mse", "evaluate/eval/eval_mse"} <= set(tags["scalars"])
    (final,) = accumulator.Scalars("final/eval_mse")
    assert final.step == 20 and final.value == pytest.approx(final_eval["eval_mse"])
    (evaluated_mse,) = accumulator.Scalars("evaluate/eval/eval_mse")
    assert evaluated_mse.value == pytest.approx(eval_metrics["eval_mse"])
    assert "evaluate/eval/predictions" in tags["images"]
    (image,) = accumulator.Images("evaluate/eval/predictions")
    assert image.width > 100 and image.height > 100
    content = accumulator.PluginTagToContent("hparams")
    experiment = plugin_data_pb2.HParamsPluginData.FromString(
        content["_hparams_/experiment"]
    ).experiment
    assert "final/eval_mse" in [m.name.tag for m in experiment.metric_infos]
    session = plugin_data_pb2.HParamsPluginData.FromString(
        content["_hparams_/session_start_info"]
    ).session_start_info
    assert session.hparams["train.num_steps"].number_value == 20
    assert session.hparams["task"].string_value == "jaxlab.example"
    assert {"run_info/text_summary", "config/text_summary"} <= set(tags["tensors"])
    assert os.path.getsize(wheel) < 2**20
