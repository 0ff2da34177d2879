"""What a person reads when an input is wrong: one line naming the path, the key and the fix.

Issue 28 items 2, 3 and 5: a --workdir that is a file (every task's `jaxlab train`), the
synthetic-data refusal naming each task's own folder key, and `evaluate` without a checkpoint
saying only that (no "using the latest" before it).
"""

import logging
import os

import pytest

from jaxlab.cli import commands as cli
from jaxlab.configs import example as example_config
from jaxlab.configs import neutrino as neutrino_config
from jaxlab.configs import sales as sales_config
from jaxlab.core import checkpoint
from jaxlab.core import config as config_lib
from jaxlab.data import ownership
from jaxlab.neutrino import data as neutrino_data
from jaxlab.sales import data as sales_data


def _jaxlab(*args: str) -> int:
    """Runs `jaxlab ARGS` in this process; its exit status."""
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["jaxlab", *args])
    return exit_info.value.code or 0


WORKDIR_IS_A_FILE_CASES = [("train", name) for name in config_lib.config_names()] + [
    ("evaluate", "example"),
    ("export", "example"),
]


@pytest.mark.parametrize("command,name", WORKDIR_IS_A_FILE_CASES)
def test_a_workdir_that_is_a_file_is_one_line(command, name, tmp_path, capsys):
    """train (every task), evaluate and export: one line saying what a workdir must be."""
    afile = tmp_path / "afile"
    afile.write_text("a note, not a run folder\n")
    extra = {"train": [f"--log_dir={tmp_path}"], "export": [f"--out={tmp_path / 'bundle'}"]}
    status = _jaxlab(
        command, f"--config={name}:tiny", f"--workdir={afile}", *extra.get(command, [])
    )
    assert status == 1
    err = capsys.readouterr().err
    expected = (
        f"jaxlab {command}: NotADirectoryError: --workdir={afile} is a file; the workdir must be "
        "a folder (a new one, or the workdir of an earlier run). Pass another --workdir. (traceback"
    )
    assert err.startswith(expected), err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert afile.read_text() == "a note, not a run folder\n"  # untouched


def test_a_workdir_below_a_file_names_that_file(tmp_path):
    from jaxlab.core import lock

    afile = tmp_path / "afile"
    afile.write_text("")
    with pytest.raises(NotADirectoryError) as error:
        lock.make_workdir(str(afile / "run" / "a"))
    assert str(error.value) == (
        f"--workdir={afile}/run/a: cannot create the folder, {afile} is a file; the workdir must "
        "be a folder. Pass another --workdir."
    )
    assert lock.make_workdir(str(tmp_path / "new" / "run")) == str(tmp_path / "new" / "run")
    assert (tmp_path / "new" / "run").is_dir()


def _user_folder(path):
    path.mkdir()
    (path / "mine.csv").write_text("a,b\n1,2\n")
    return str(path)


def _refusal(folder: str, key: str) -> str:
    """The ownership refusal for a user's `folder` holding mine.csv, naming config key `key`."""
    return (
        f"{folder} holds files that jaxlab did not write (e.g. mine.csv); set "
        f"data.synthetic=False to use them, or point {key} at an empty folder."
    )


# (config module, data module, the config key of the task's data folder)
REFUSAL_CASES = {
    "neutrino": (neutrino_config, neutrino_data, "root"),
    "sales": (sales_config, sales_data, "csv_dir"),
}


@pytest.mark.parametrize("task", sorted(REFUSAL_CASES))
def test_refusal_names_the_tasks_data_key(task, tmp_path):
    config_module, data_module, key = REFUSAL_CASES[task]
    config = config_module.get_config("tiny")
    config.data[key] = _user_folder(tmp_path / "user")
    with pytest.raises(ownership.DataDirError) as error:
        data_module.prepare(config, str(tmp_path / "work"))
    assert str(error.value) == _refusal(f"{tmp_path}/user", f"data.{key}")


def test_sales_refusal_without_csv_dir_still_names_it(tmp_path):
    config = sales_config.get_config("tiny")
    # Without csv_dir the synthetic CSVs go to <workdir>/data: csv_dir is still the key to move.
    work = tmp_path / "work2"
    work.mkdir()
    _user_folder(work / "data")
    config.data.csv_dir = ""
    with pytest.raises(ownership.DataDirError, match=r"point data\.csv_dir at an empty folder\.$"):
        sales_data.prepare(config, str(work))


def test_evaluate_without_a_checkpoint_says_only_that(tmp_path, caplog):
    config = example_config.get_config("tiny")
    os.makedirs(tmp_path / "run")
    manager = checkpoint.manager_from_config(config, str(tmp_path / "run"), read_only=True)
    caplog.set_level(logging.INFO)
    with pytest.raises(FileNotFoundError) as error:
        checkpoint.select_step(manager, "best", "eval_mse", "min")
    assert str(error.value) == f"No checkpoint in {manager.directory}."
    assert "using the latest" not in caplog.text
    with pytest.raises(FileNotFoundError, match="^No checkpoint in "):
        checkpoint.select_step(manager, "latest", None, "min")
    manager.close()
