"""The multi-view study end to end (`glitch:study_tiny`): the planted comparison comes out.

The synthetic data plant three class pairs that look the same in the 1.0 s window and differ
only in the 2.0 s and 4.0 s ones (`synthetic.TIME_SCALE_PAIRS`). A single-view ViT on 1.0 s can
at best tell which pair a glitch belongs to (about half right within the pair), while the
multi-view ViT with cross-attention fusion sees the long windows. A fusion that ignored the long
views (or a data pipeline that fed the wrong window) would lose that gap and fail here.
"""

import os

import numpy as np
import pytest

from jaxlab.configs import example as example_config
from jaxlab.configs import glitch as glitch_config
from jaxlab.core import task as task_lib
from jaxlab.glitch import data, study, synthetic
from tests.core import study_util


def test_planted_pairs_are_identical_in_the_one_second_window():
    """The premise of the study: the pair's renders match at 0.5 s and 1.0 s, not at 2.0 s."""
    height, width = 56, 68  # study_tiny's stored views
    y = (1.0 - (np.arange(height) + 0.5) / height)[:, None]
    for first, second in synthetic.TIME_SCALE_PAIRS:
        for seed in range(5):
            params = synthetic.draw_params(np.random.default_rng(seed))
            gap = {}
            for dur in ("0.5", "1.0", "2.0", "4.0"):
                t = ((np.arange(width) + 0.5) / width * float(dur) - float(dur) / 2)[None]
                a = synthetic.render(first, params, t, y)
                gap[dur] = np.abs(a - synthetic.render(second, params, t, y)).max()
            assert gap["0.5"] < 1e-3 and gap["1.0"] < 1e-3, (first, second, gap)
            assert max(gap["2.0"], gap["4.0"]) > 0.3, (first, second, gap)


def test_study_command_finds_the_task_study_and_refuses_a_task_without_one():
    config = glitch_config.get_config("study_tiny")
    assert task_lib.import_task(config, "study").main is study.main
    with pytest.raises(ValueError, match="cannot import jaxlab.example.study"):
        task_lib.import_task(example_config.get_config("tiny"), "study")
    config = glitch_config.get_config("tiny")  # no study block
    with pytest.raises(ValueError, match="glitch:study"):
        study.main(config, "/nonexistent")


def test_cnn_arm_trains_the_merged_view_cnn_at_the_study_rate():
    """The CNN arm's config (its training is the glitch CNN's, tests/glitch/test_model.py; the
    slow study below runs only the two ViT arms its planted comparison is about)."""
    config = glitch_config.get_config("study_tiny")
    config.model.pretrained = "vit.safetensors"
    config.study.cnn_image_size, config.study.cnn_lr = 24, 3e-3
    c = study.arm_config(config, "cnn_merged", 3, "/data")
    assert (c.model.name, c.data.multi_view, c.model.pretrained) == ("cnn", True, "")
    assert c.optim.lr == 3e-3 and config.optim.lr == 1e-3
    assert (c.data.image_size, c.seed, c.data.dir, c.data.synthetic) == (24, 3, "/data", False)
    single = study.arm_config(config, "vit_single", 0, "/data")
    assert (single.model.name, single.data.multi_view, single.data.view) == ("vit", False, "1.0")
    with pytest.raises(ValueError, match="unknown arm 'cnn'"):
        study.arm_config(config, "cnn", 0, "/data")


@pytest.mark.slow  # two small training runs of 15 epochs (about 1 min on a quiet 2-core CPU)
@pytest.mark.parametrize("seed", [0])
def test_study_tiny_multi_view_beats_single_view_on_time_scale_classes(tmp_path, seed, two_devices):
    config = glitch_config.get_config("study_tiny")
    config.seed = seed  # the data and the arms' training seed both move
    config.study.seeds = (seed,)
    config.study.arms = ("vit_multiview", "vit_single")  # the compared pair (cnn: test above)
    workdir = str(tmp_path)
    flat = study.main(config, workdir)

    saved, table = study_util.written_report(workdir)
    assert "vit_multiview" in table and "reference" in table

    # The study's numbers are the predictions' numbers (recomputed here independently).
    test = data.load(
        study.arm_config(config, "vit_single", seed, os.path.join(workdir, "data")),
        os.path.join(workdir, "data"),
        "test",
    )
    classes = tuple(config.data.classes)
    assert set(config.study.time_scale_classes) == set(synthetic.TIME_SCALE_CLASSES)
    subset = np.isin(test.labels, [classes.index(c) for c in synthetic.TIME_SCALE_CLASSES])
    acc = {}
    for arm in config.study.arms:
        predicted = np.load(study.prediction_path(workdir, arm, seed))
        acc[arm] = np.mean(predicted[subset] == test.labels[subset])
        ts = saved["metrics"]["time_scale_accuracy"][arm]
        assert ts["value"] == pytest.approx(acc[arm])
        assert flat[f"study_{arm}_accuracy"] == pytest.approx(np.mean(predicted == test.labels))

    # The planted comparison: the four views separate the pairs the 1.0 s view cannot.
    multi, single = acc["vit_multiview"], acc["vit_single"]
    assert multi >= 0.75, acc
    assert multi - single >= 0.2, acc
    diff = saved["metrics"]["time_scale_accuracy"]["vit_single"]
    assert diff["diff_hi"] < 0, diff  # the paired interval excludes no difference
