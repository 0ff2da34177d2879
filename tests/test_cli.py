"""The `jaxlab` command: config names and variants, one-line errors, recorded configs, and (slow)
the built wheel installed into a fresh venv outside the repository, trained and evaluated there."""

import importlib.util
import json
import os
import pathlib
import subprocess
import sys
import venv

import ml_collections
import pytest

from jaxlab import cli
from jaxlab.core import task as task_lib
from tests.core import scripts_util

REPO = scripts_util.REPO


@pytest.mark.parametrize("name", task_lib.config_names())
def test_parsed_variants_are_exactly_the_ones_get_config_accepts(name):
    file = task_lib.CONFIG_PACKAGE / f"{name}.py"
    variants = task_lib.config_variants(file)
    assert variants[0] == "demo" and "tiny" in variants
    for variant in variants:  # each parsed name loads ...
        assert task_lib.load_config(f"{name}:{variant}").task == f"jaxlab.{name}"
    with pytest.raises(FileNotFoundError, match=r"unknown variant 'nope'; its variants are: demo"):
        task_lib.load_config(f"{name}:nope")
    spec = importlib.util.spec_from_file_location(f"_config_{name}", file)  # ... get_config
    loaded = importlib.util.module_from_spec(spec)  # itself rejects a name the parser missed
    spec.loader.exec_module(loaded)
    with pytest.raises(ValueError, match="unknown variant"):
        loaded.get_config("nope")


def test_config_names_resolve_from_any_cwd(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    file, variant = task_lib.config_file("example:tiny")
    assert file == REPO / "jaxlab" / "configs" / "example.py" and variant == "tiny"
    with pytest.raises(FileNotFoundError, match=r"Unknown config 'exmple'; the configs are: ex"):
        task_lib.config_file("exmple:tiny")
    with pytest.raises(FileNotFoundError, match=r"mine\.py does not exist \(packaged configs"):
        task_lib.config_file("mine.py:demo")


def test_unknown_key_names_the_key_and_its_siblings():
    argv = ["jaxlab", "--config=example:tiny", "--config.optim.lr=1", "--config.train.nope=3"]
    message = task_lib._unknown_key(argv)
    assert message.startswith("unknown config key 'train.nope'. train has: ")
    assert "num_steps" in message
    assert task_lib._unknown_key(["jaxlab", "--config=example:tiny", "--config.seed=1"]) is None


def test_top_help_lists_commands_configs_variants_and_flags(capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["jaxlab", "--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    for command in cli.COMMANDS:
        assert f"\n  {command} " in text
    for name in task_lib.config_names():
        assert f"\n  {name} " in text
    assert "vit_b16_multiview" in text and "fullres_minimal" in text  # variants
    assert "--config.KEY=VALUE" in text and "--workdir=DIR" in text


@pytest.mark.parametrize("command", ["predict", "export", "download", "check-data"])
def test_unavailable_commands_say_what_to_use_and_exit_2(command, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["jaxlab", command])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("jaxlab: not yet available in this version: ") and err.count("\n") == 1


def _recorded(config: ml_collections.ConfigDict) -> dict:
    return json.loads(config.to_json())


def test_recorded_config_wins_and_conflicting_overrides_are_named():
    trained = task_lib.load_config("example:tiny")
    trained.train.num_steps = 12
    trained.model.hidden = (8, 4)
    trained.mesh = [("data", 2)]
    given = task_lib.load_config("example:demo")  # a different variant, as --config gives it
    given.eval.checkpoint = "latest"  # explicit: eval keys may differ
    given.optim.lr = 0.5  # explicit and trained otherwise: a conflict
    conflicts = cli.merge_recorded(given, _recorded(trained), ["eval.checkpoint", "optim.lr"])
    assert conflicts == [("optim.lr", trained.optim.lr, 0.5)]
    assert given.train.num_steps == 12 and given.data.num_train == trained.data.num_train
    assert given.model.hidden == (8, 4)  # a tuple again, not JSON's list
    assert given.mesh == [("data", 2)]
    assert given.eval.checkpoint == "latest"
    assert cli.merge_recorded(given, _recorded(given), ["optim.lr"]) == []


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
    venv.create(env_dir, with_pip=True)
    python = str(env_dir / "bin" / "python")
    own_site = pathlib.Path(_site_packages(python))
    (own_site / "_deps.pth").write_text(_site_packages(sys.executable) + "\n")
    subprocess.run(
        [python, "-m", "pip", "install", "--quiet", "--no-deps", str(wheel)],
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
