"""The task configs' shared blocks (jaxlab/configs/common.py) and what they promise every variant.

A variant is its base config plus a few overrides; these tests check the overrides are checked
(a misspelt key is an error, not a new field), that every variant's cadence is one of the two
the trainer knows, and that the bfloat16 variants change nothing but the compute dtype.
"""

from __future__ import annotations

import importlib

import ml_collections
import pytest

from jaxlab.configs import common
from jaxlab.core import config as config_lib

ALL_VARIANTS = [
    (task, variant)
    for task in config_lib.config_names()
    for variant in importlib.import_module(f"jaxlab.configs.{task}").VARIANTS
]


def _flat(config: ml_collections.ConfigDict) -> dict[str, object]:
    """{"a.b.c": value} of every leaf."""
    out = {}
    for key, value in config.items():
        if isinstance(value, ml_collections.ConfigDict):
            out.update({f"{key}.{k}": v for k, v in _flat(value).items()})
        else:
            out[key] = value
    return out


def test_override_sets_existing_fields_with_the_configs_own_type_rules():
    optim = common.get_common().optim
    common.override(optim, lr=1, name="sgd")
    assert optim.lr == 1.0 and isinstance(optim.lr, float)  # int -> float, as `optim.lr = 1`
    assert optim.name == "sgd"
    with pytest.raises(TypeError):
        common.override(optim, lr="fast")


def test_override_names_an_unknown_field_and_changes_nothing():
    optim = common.get_common().optim
    before = optim.to_dict()
    with pytest.raises(KeyError, match="no field \\['warmup_step'\\]"):
        common.override(optim, lr=0.5, warmup_step=10)
    assert optim.to_dict() == before


def test_adamw_sets_the_name_rate_and_given_fields_only():
    config = common.get_common()
    config.optim.name = "sgd"
    before = _flat(config)
    common.adamw(config.optim, lr=3e-3, warmup_steps=50)
    after = _flat(config)
    changed = {k for k in after if after[k] != before[k]}
    assert changed == {"optim.name", "optim.lr", "optim.warmup_steps"}
    assert (after["optim.name"], after["optim.lr"], after["optim.warmup_steps"]) == (
        "adamw",
        3e-3,
        50,
    )


@pytest.mark.parametrize(("task", "variant"), ALL_VARIANTS)
def test_every_variant_counts_in_steps_or_in_epochs_and_checkpoints_at_evaluations(task, variant):
    train = config_lib.load_config(f"{task}:{variant}").train
    if train.eval_every_epochs:  # epochs: validation, early stop and checkpoint once an epoch
        assert train.num_epochs > 0 and train.warmup_epochs >= 0
        assert (train.num_steps, train.eval_every, train.ckpt_every) == (0, 0, 0)
    else:  # steps: the best checkpoint is the best evaluation's
        assert 0 < train.log_every <= train.num_steps
        assert 0 < train.eval_every == train.ckpt_every <= train.num_steps


@pytest.mark.parametrize(
    ("task", "variant", "base"),
    [
        ("glitch", "vit_b16_multiview_bf16", "paper"),
        ("vegetation", "paper_bf16", "paper"),
        ("vegetation", "bench_b1_bf16", "bench_b1"),
    ],
)
def test_bfloat16_variants_differ_from_their_base_in_the_compute_dtype_only(task, variant, base):
    low = _flat(config_lib.load_config(f"{task}:{variant}"))
    full = _flat(config_lib.load_config(f"{task}:{base}"))
    assert low.keys() == full.keys()
    assert {k: (full[k], low[k]) for k in low if low[k] != full[k]} == {
        "model.dtype": ("float32", "bfloat16")
    }
