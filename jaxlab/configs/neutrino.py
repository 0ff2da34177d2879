"""IceCube neutrino direction (jaxlab/neutrino): hierarchical transformer over packed pulses.

Demo (synthetic events written to <workdir>/data in the Kaggle layout, 2-core CPU):
  python scripts/train.py --config=neutrino:demo --workdir=runs/neutrino
  python scripts/evaluate.py --config=neutrino:demo --workdir=runs/neutrino
Expect: mean angular error (`mean_angular_error`, competition formula) about 0.53 rad (median
about 0.26) on the 4000 held-out synthetic events, against `baseline_constant` 1.57 rad (the mean
training direction as a constant guess); about 3 minutes on an idle 2-core CPU. Packing: ~0.97 of
pulse tokens and ~0.88 of DOM tokens are real, ~35 events per pack. runs/neutrino/eval/eval/ holds
metrics.json, submission.csv, error_vs_size.png and zenith.png.

Study (hierarchical vs a flat transformer over the same pulses at a matched parameter count, plus
line-fit and mean-direction baselines; same data and seeds, paired bootstrap intervals;
jaxlab/neutrino/README.md "Study"):
  jaxlab study --config=neutrino:study --workdir=runs/neutrino_study
  jaxlab study --config=neutrino:study_long --workdir=runs/neutrino_study_long  (long events;
      adds the flat arm at the hierarchical arm's attention cost)

Real data (Kaggle "icecube-neutrinos-in-deep-ice" unzipped to DIR; jaxlab/neutrino/README.md):
  python scripts/train.py --config=neutrino:paper --workdir=runs/neutrino_paper \
      --config.data.root=DIR
  python scripts/evaluate.py --config=neutrino:paper --workdir=runs/neutrino_paper \
      --config.data.root=DIR
  (add --config.eval.split=test for a submission.csv of the unlabelled test events)
Expect (paper: the seed's 1.6M-parameter model, vMF loss, ~900K training events = batches 1-5,
held-out batch 6): no number is verified here; for scale, published full-data scores are about
1.02 (GraphNeT DynEdge) and 0.96 (the winner); a line fit scores about 1.18.

Variants: demo, tiny (tests; derived from demo), paper (the seed's setup on the real data), study
(the hierarchy study on the demo's data and model, seeds 0 and 1), study_tiny (a slow test),
study_paper (the study at the seed's scale on the real data), study_long (the study on long events
with a cost-matched flat arm), study_long_tiny (its slow test).
Keys to vary: data.train_batches / data.eval_batches (batch files of train_meta.parquet), the pack
shapes data.pulse_rows x data.pulse_row_len and data.dom_rows x data.dom_row_len with
data.pack_events slots, train.global_batch_size (packs per step, a multiple of the devices),
data.max_doms / data.max_pulses_per_dom (truncation), train.loss ("angular" or "vmf"), model.*.
Logged rates: `events_per_sec` counts events; `examples_per_sec` counts packs.
"""

from __future__ import annotations

import ml_collections

from jaxlab.configs import common
from jaxlab.core import config as config_lib

# The demo's headline: the evaluation metric, the baseline it should beat, which is better.
HEADLINE = ("mean_angular_error", "baseline_constant", "lower")


def paper() -> ml_collections.ConfigDict:
    """The seed's setup: 1.6M-parameter model, vMF loss, Kaggle batches 1-5, eval on batch 6."""
    config = common.get_common()
    config.task = "jaxlab.neutrino"

    config.data = ml_collections.ConfigDict()
    common.input_workers(config.data)  # data.workers: reader processes
    config.data.root = ""  # the Kaggle folder (required for real data); synthetic: <workdir>/data
    config.data.synthetic = False  # True: write the synthetic dataset to data.root first
    # Batch files of train_meta.parquet used for training / held-out evaluation ("1-8", "1,3",
    # or a tuple); "" means every batch of the meta file. "test" reads test_meta.parquet.
    config.data.train_batches = "1-5"
    config.data.eval_batches = "6"
    config.data.test_batches = ""
    config.data.cache_files = 2  # decoded batch files kept per process
    # A meta row repeating an event_id: "error", or "drop_later" (keep the first, log the count).
    config.data.on_duplicate = "error"
    # Per-event caps (truncation rule in jaxlab/neutrino/data_packing.py).
    config.data.max_doms = 128
    config.data.max_pulses_per_dom = 16
    # One pack: pulse_rows x pulse_row_len pulse tokens, dom_rows x dom_row_len DOM tokens,
    # pack_events event slots. A batch is train.global_batch_size packs.
    config.data.pulse_rows = 16
    config.data.pulse_row_len = 128
    config.data.dom_rows = 12
    config.data.dom_row_len = 128
    config.data.pack_events = 96
    config.data.num_threads = 2
    config.data.prefetch = 64  # events read ahead (whole blocks, at least one per thread)
    # Events processed together (one sort, one gather per block; jaxlab/neutrino/data_packing.py).
    config.data.block_events = 1024

    # Synthetic dataset (jaxlab/neutrino/synthetic.py), used when data.synthetic is True.
    config.data.synth = ml_collections.ConfigDict()
    config.data.synth.train_batches = 6  # batch 6 is held out by data.eval_batches
    config.data.synth.test_batches = 1
    config.data.synth.events_per_batch = 2000
    config.data.synth.max_pulses = 256
    config.data.synth.energy_scale = 3.0
    config.data.synth.energy_cap = 200.0
    config.data.synth.track_half_length = 150.0  # metres lit before / after the vertex (mean)
    config.data.synth.noise_hits = 8.0  # dark-noise pulses per event (mean)

    # The seed's model: d_model 128, 4 + 4 layers, dropout 0.1 (~1.6M parameters).
    config.model = ml_collections.ConfigDict(
        dict(d_model=128, dom_layers=4, event_layers=4, num_heads=8, mlp_dim=512, dropout=0.1)
    )
    config.model.dtype = "float32"
    # "hierarchical" (pulse -> DOM -> event, the seed's) or "flat" (one encoder over an event's
    # pulses; the study's comparison arm) with flat_layers blocks of flat_mlp_dim (0: dom_layers +
    # event_layers, mlp_dim).
    config.model.kind = "hierarchical"
    config.model.flat_layers = 0
    config.model.flat_mlp_dim = 0
    config.model.flat_max_tokens = 0  # flat: at most this many pulses per event (0: all)

    config.train.loss = "vmf"  # "angular" or "vmf"
    # Packs per step: 8 x 2048 pulse tokens, ~250 events at ~70 pulses per event (seed: 256).
    config.train.global_batch_size = 8
    common.step_cadence(config.train, num_steps=40_000, log_every=100, eval_every=2000)
    config.eval.split = "eval"
    config.eval.global_batch_size = 8  # packs
    config.eval.best_metric = "mean_angular_error"
    config.eval.best_mode = "min"
    # Event-size bins of the error breakdown (lower edges; the last bin is open).
    config.eval.pulse_bins = (0, 20, 50, 100, 200, 500, 1000)
    config.eval.dom_bins = (0, 10, 20, 40, 80)

    common.adamw(config.optim, lr=3e-4, schedule="warmup_cosine", warmup_steps=1000, clip_norm=1.0)
    config.optim.weight_decay = 1e-2
    return config


def demo() -> ml_collections.ConfigDict:
    """A small model on synthetic data: minutes on a laptop CPU."""
    config = paper()
    config.data.synthetic = True
    common.override(config.data, max_doms=64, max_pulses_per_dom=8, pack_events=64)
    common.override(config.data, pulse_rows=12, pulse_row_len=64, dom_rows=10, dom_row_len=64)
    common.override(config.data.synth, events_per_batch=4000, train_batches=4)
    common.override(config.data, train_batches="1-3", eval_batches="4")
    common.override(config.model, d_model=64, dom_layers=1, event_layers=2, num_heads=4)
    common.override(config.model, mlp_dim=128, dropout=0.0)
    config.train.loss = "angular"
    config.train.global_batch_size = 2
    common.step_cadence(config.train, num_steps=1000, log_every=100, eval_every=500)
    config.eval.global_batch_size = 8
    common.override(config.optim, lr=2e-3, warmup_steps=100)
    return config


def tiny() -> ml_collections.ConfigDict:
    """The demo shrunk for tests: seconds on CPU, 8 packs for 8 fake devices."""
    config = demo()
    common.override(config.data, max_doms=32, max_pulses_per_dom=4, pack_events=16)
    common.override(config.data, pulse_rows=4, pulse_row_len=32, dom_rows=2, dom_row_len=32)
    common.override(config.data.synth, events_per_batch=300, train_batches=3, max_pulses=64)
    # Bigger, cleaner events: learnable in ~100 steps.
    common.override(config.data.synth, energy_scale=6.0, track_half_length=500.0, noise_hits=2.0)
    common.override(config.data, train_batches="1-2", eval_batches="3")
    common.override(config.model, d_model=32, event_layers=1, num_heads=2, mlp_dim=64)
    config.train.global_batch_size = 8
    common.step_cadence(config.train, num_steps=20, log_every=5, eval_every=10)
    common.override(config.optim, lr=3e-3, warmup_steps=2)
    return config


def with_study(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """Adds the hierarchy study's block (jaxlab/neutrino/study.py) to `config`."""
    config.study = sc = ml_collections.ConfigDict()
    sc.arms = ("hierarchical", "flat", "linefit", "mean_direction")
    sc.reference = "hierarchical"
    sc.seeds = (0, 1)
    sc.test_batches = "5"  # held out from training and from checkpoint selection (eval_batches)
    sc.pulse_bins = (0, 20, 40, 80)  # lower edges of the error-by-size bins (last one open)
    sc.max_param_gap = 0.1  # the flat arm's parameter count within 10% of the hierarchical one
    sc.bootstrap_resamples = 2000
    return config


def study() -> ml_collections.ConfigDict:
    """The hierarchy study on the demo's data and model (one more synthetic batch as test)."""
    config = with_study(demo())
    config.data.synth.train_batches = 5
    config.model.flat_mlp_dim = 149  # 117,890 parameters vs the hierarchical 118,083
    return config


def study_paper() -> ml_collections.ConfigDict:
    """The hierarchy study at the seed's scale on the real data: batches 1-5 train, 6 picks the
    checkpoint, 7 is the test."""
    config = with_study(paper())
    config.study.seeds = (0,)
    config.study.test_batches = "7"
    config.study.pulse_bins = (0, 20, 50, 100, 200, 500)
    config.model.flat_mlp_dim = 528  # 1,654,147 parameters vs the hierarchical 1,654,275
    return config


def study_tiny() -> ml_collections.ConfigDict:
    """The study shrunk for a test (tiny's data and model, one seed)."""
    config = with_study(tiny())
    config.data.synth.train_batches = 4
    config.study.test_batches = "4"
    config.model.flat_mlp_dim = 80  # 21,795 parameters vs the hierarchical 21,827
    common.override(config.study, seeds=(0,), bootstrap_resamples=500, pulse_bins=(0, 30, 60))
    # Long enough for both arms to learn the direction well beyond the constant guess (the
    # flat arm's margin over it at 90 steps: 0.45 rad on seed 1, the closer of seeds 0 and 1).
    # Validation and a checkpoint halfway and at the end (the best was the last on both seeds).
    common.step_cadence(config.train, num_steps=90, log_every=45, eval_every=45)
    return config


def study_long() -> ml_collections.ConfigDict:
    """The hierarchy study on long events (many pulses per DOM), with a cost-matched flat arm.

    Brighter, longer tracks than the demo's (median ~110 pulses on ~40 DOMs, the busiest DOM of a
    median event ~17 pulses); each event keeps its 32 brightest DOMs x 16 earliest pulses (up to
    512 pulse tokens). `flat_matched` may attend over `study.matched_tokens` pulses per event
    (`jaxlab/neutrino/study.py`), the plain `flat` arm over all of them."""
    config = with_study(demo())
    config.study.arms = ("hierarchical", "flat_matched", "flat", "linefit", "mean_direction")
    config.study.seeds = (0,)
    config.study.pulse_bins = (0, 50, 100, 200, 400)
    config.data.synth.train_batches = 5
    common.override(config.data.synth, events_per_batch=2000, max_pulses=2000, energy_cap=2000.0)
    common.override(config.data.synth, energy_scale=40.0, track_half_length=300.0)
    common.override(config.data, max_doms=32, max_pulses_per_dom=16, pack_events=32)
    common.override(config.data, pulse_rows=16, pulse_row_len=64, dom_rows=4, dom_row_len=64)
    config.model.flat_mlp_dim = 149  # 117,890 parameters vs the hierarchical 118,083
    common.step_cadence(config.train, num_steps=600, log_every=100, eval_every=200)
    return config


def study_long_tiny() -> ml_collections.ConfigDict:
    """`study_long` shrunk for a test: tiny's model, 16 DOMs x 16 pulses per event, one seed."""
    config = study_tiny()
    config.study.arms = ("hierarchical", "flat_matched", "flat", "linefit", "mean_direction")
    config.study.pulse_bins = (0, 50, 100, 200)
    common.override(config.data.synth, max_pulses=1000, energy_cap=1000.0)
    common.override(config.data.synth, energy_scale=40.0, track_half_length=300.0, noise_hits=8.0)
    common.override(config.data, max_doms=16, max_pulses_per_dom=16, pack_events=8)
    common.override(config.data, pulse_rows=8, pulse_row_len=64, dom_rows=2, dom_row_len=32)
    # The long events need study_tiny's former 120 steps for the hierarchy's lead (README).
    common.step_cadence(config.train, num_steps=120, log_every=60, eval_every=60)
    return config


VARIANTS = {
    f.__name__: f
    for f in (demo, tiny, paper, study, study_tiny, study_paper, study_long, study_long_tiny)
}


def get_config(arg: str = "demo") -> ml_collections.ConfigDict:
    return config_lib.variant(VARIANTS, arg, __name__)
