"""Olist sales: conditional WGAN-GP sequence generator, LSTM forecasters, augmentation study.

Run (synthetic Olist-format CSVs are written into the workdir first):
  python scripts/train.py --config=sales:demo --workdir=runs/sales
  python scripts/evaluate.py --config=sales:demo --workdir=runs/sales

Expect (demo, test split, normalised scale; about 10 min of training and 1 min of evaluation on
a shared 2-core CPU): real-only LSTM test MAE about 0.128, at most 0.9 x the better naive
forecast (same weekday, about 0.145; history mean about 0.147), with a 95% paired-bootstrap
interval of the difference below 0; real + generated about 0.130 (augmentation does not help
at 100% of the data); generated only (TSTR) about 0.140; discriminative_score about 0.03 (lower
is better) against about 0.49 for the naive generator. The table is in
runs/sales/eval/test/comparison.txt; measured numbers are in jaxlab/sales/README.md.

The augmentation study (fractions of the training windows x ratios of generated windows x seeds,
table + figure in runs/sales_study/study/; about 20 min on the demo data):
  python scripts/train.py --config=sales:study --workdir=runs/sales_study

Real data: build the panel once, then train on it (or set --config.data.csv_dir=<folder of the
Olist CSVs> to build it on first use):
  python scripts/prepare_sales.py --csv_dir=<olist csv folder> --out=<panel.parquet>
  python scripts/train.py --config=sales:paper --workdir=runs/sales_paper \
      --config.data.panel_path=<panel.parquet>

Variants:
  demo       synthetic data (200 products, 420 days), small networks, minutes on 2 CPU cores.
  paper      the original system's setup: 512-d condition, 128-unit recurrent layers, 20k WGAN-GP
             iterations, 3 generated sequences per window, real data (data.synthetic = False),
             then the augmentation study at the same sizes (study.mode = "also").
  quick_run  the paper's architecture on the demo's synthetic data with short training.
  study      the augmentation study alone on the demo's data, small sizes.
  study_tiny the study on tiny (tests).
  tiny       demo shrunk for tests (seconds).
  On Kaggle, paper finds the Olist CSVs under /kaggle/input (data.kaggle_input); use
  --workdir=/kaggle/working/sales_paper (README, "Kaggle").
Vary: gan.n_critic / gan.lambda_gp / gan.lr_g / gan.lr_d (WGAN-GP), augment.ratio (generated
windows per real window in the augmented set), gan.samples_per_window, train.num_steps (GAN
iterations), forecaster.num_steps, train.global_batch_size (windows per GAN iteration: n_critic
slices of global_batch_size / n_critic).
"""

from __future__ import annotations

import ml_collections

from jaxlab.configs import common
from jaxlab.core import config as config_lib
from jaxlab.core import optim

# The demo's headline: the evaluation metric, the baseline it should beat, which is better.
HEADLINE = ("discriminative_score", "discriminative_score_naive", "lower")


def demo() -> ml_collections.ConfigDict:
    config = common.get_common()
    config.task = "jaxlab.sales"
    del config.optim  # the GAN has its own Adam (config.gan), the forecasters config.forecaster

    config.data = ml_collections.ConfigDict()
    common.input_workers(config.data)  # data.workers: reader processes
    config.data.synthetic = True  # write Olist-format CSVs into <workdir>/data/olist first
    config.data.csv_dir = ""  # Olist CSV folder (default <workdir>/data/olist)
    config.data.kaggle_input = ""  # real data: search here for the Olist CSVs when csv_dir is ""
    config.data.panel_path = ""  # product-day panel parquet (default <workdir>/data/panel.parquet)
    config.data.num_products = 200  # synthetic only
    config.data.num_days = 420  # synthetic only
    config.data.min_sales = 30  # products with fewer units sold are excluded
    config.data.exclude_statuses = ("canceled", "unavailable")
    config.data.on_duplicate = "error"  # repeated order / item rows: "error" or "drop_later"
    config.data.split_fractions = (0.7, 0.15)  # train, val; test is the rest (chronological)
    config.data.history = 30
    config.data.horizon = 7
    config.data.window_stride = 1

    config.model = ml_collections.ConfigDict()
    config.model.lstm_size = 64
    config.model.temporal_size = 32
    config.model.review_size = 16
    config.model.cond_dim = 64  # paper: 512
    config.model.gen_hidden = 64
    config.model.critic_channels = 32
    config.model.critic_hidden = 64
    config.model.seasonal_init = True  # generator's weekly skip starts as seasonal naive (or 0)

    config.gan = ml_collections.ConfigDict()
    config.gan.noise_dim = 16
    config.gan.n_critic = 5  # critic steps per generator step
    config.gan.lambda_gp = 10.0
    config.gan.lr_d = 4e-4
    config.gan.lr_g = 1e-4
    config.gan.b1 = 0.0
    config.gan.b2 = 0.9
    config.gan.samples_per_window = 1  # generated sequences per training window
    config.gan.generate_checkpoint = "latest"

    config.augment = ml_collections.ConfigDict()
    config.augment.ratio = 0.5  # generated windows per real window in the augmented set

    config.forecaster = ml_collections.ConfigDict()
    config.forecaster.lstm_size = 64
    config.forecaster.hidden = 64
    config.forecaster.loss = "mae"  # "mae" fits the conditional median (the MAE minimiser), "mse"
    config.forecaster.num_steps = 3000
    config.forecaster.global_batch_size = 128
    config.forecaster.eval_every = 250  # validation MAE and a checkpoint (the best is kept)
    config.forecaster.optim = optim.default_optim_config()
    config.forecaster.optim.lr = 2e-3
    config.forecaster.optim.warmup_steps = 50

    # Steps are WGAN-GP iterations (n_critic critic + 1 generator step each); an iteration reads
    # global_batch_size windows: 5 critic slices of 64.
    config.train.global_batch_size = 320
    common.step_cadence(config.train, num_steps=400, log_every=50, eval_every=200)

    config.eval.split = "test"
    config.eval.global_batch_size = 256
    config.eval.checkpoint = "latest"  # GAN checkpoint for evaluation
    config.eval.forecaster_checkpoint = "best"  # by validation MAE
    config.eval.best_metric = "eval_moment_gap"
    config.eval.best_mode = "min"
    config.eval.max_windows = 2048  # GAN evaluation windows (evenly spread; <= 0: all)
    config.eval.disc_hidden = 32  # discriminative-score GRU classifier
    config.eval.disc_steps = 600
    config.eval.disc_batch_size = 128
    config.eval.disc_lr = 3e-3
    config.eval.disc_test_fraction = 0.3
    config.eval.bootstrap_resamples = 1000
    config.eval.num_plot_windows = 6
    config.eval.plot_samples = 5

    # The augmentation study (jaxlab/sales/study.py): "off", "only" (the study instead of the
    # three-forecaster run) or "also" (after it). Per fraction of the training windows
    # (chronological), a GAN of study.gan_steps iterations on those windows, then per seed the
    # forecasters real, real + generated at each ratio, and generated only (TSTR).
    config.study = ml_collections.ConfigDict()
    config.study.mode = "off"
    config.study.fractions = (0.05, 0.1, 0.25, 0.5, 1.0)
    config.study.ratios = (0.5, 1.0, 2.0)
    config.study.seeds = (0, 1)
    config.study.gan_steps = 400
    config.study.val_windows = 2048  # validation windows of the forecasters' early stopping
    return config


def tiny() -> ml_collections.ConfigDict:
    """The demo shrunk for tests: seconds on CPU."""
    config = demo()
    common.override(config.data, num_products=40, num_days=200, min_sales=10, window_stride=3)
    common.override(config.model, lstm_size=16, temporal_size=8, review_size=8, cond_dim=16)
    common.override(config.model, gen_hidden=16, critic_channels=8, critic_hidden=16)
    config.gan.noise_dim = 4
    config.train.global_batch_size = 80  # 5 critic slices of 16
    common.step_cadence(config.train, num_steps=20, log_every=5, eval_every=10)
    common.override(config.forecaster, lstm_size=16, hidden=16, num_steps=150, eval_every=50)
    config.forecaster.global_batch_size = 16
    config.forecaster.optim.warmup_steps = 2
    common.override(config.eval, global_batch_size=64, max_windows=256, disc_steps=60)
    common.override(config.eval, disc_batch_size=32, bootstrap_resamples=100)
    return config


def _paper_architecture(config: ml_collections.ConfigDict) -> None:
    """The original system's networks: 512-d condition, 128-unit recurrent layers."""
    common.override(config.model, lstm_size=128, temporal_size=64, review_size=32, cond_dim=512)
    common.override(config.model, gen_hidden=128, critic_channels=64, critic_hidden=256)
    config.gan.noise_dim = 32
    common.override(config.forecaster, lstm_size=128, hidden=128)


def paper() -> ml_collections.ConfigDict:
    """The original setup on the real Olist panel (set data.panel_path or data.csv_dir)."""
    config = demo()
    _paper_architecture(config)
    config.data.synthetic = False
    config.data.min_sales = 50
    common.step_cadence(config.train, num_steps=20000, log_every=50, eval_every=1000)
    config.gan.samples_per_window = 3
    common.override(config.forecaster, num_steps=10000, eval_every=500)
    common.override(config.eval, max_windows=8192, disc_steps=2000)
    # Kaggle: the Olist dataset attached to a notebook is found under /kaggle/input; run with
    # --workdir=/kaggle/working/sales_paper (see README, "Kaggle").
    config.data.kaggle_input = "/kaggle/input"
    common.override(config.study, mode="also", seeds=(0, 1, 2), gan_steps=20000, val_windows=8192)
    return config


def study() -> ml_collections.ConfigDict:
    """The augmentation study alone on the demo's data at small sizes (about 20 min, 2 CPUs)."""
    config = demo()
    common.override(config.study, mode="only", gan_steps=150)
    common.override(config.forecaster, num_steps=600, eval_every=100)
    common.override(config.eval, disc_steps=300, bootstrap_resamples=500)
    return config


def study_tiny() -> ml_collections.ConfigDict:
    """The study on tiny (tests): two fractions, one ratio, one seed, seconds."""
    config = tiny()
    common.override(config.study, mode="only", fractions=(0.25, 1.0), ratios=(1.0,), seeds=(0,))
    common.override(config.study, gan_steps=5, val_windows=128)
    common.override(config.forecaster, num_steps=40, eval_every=20)
    return config


def quick_run() -> ml_collections.ConfigDict:
    """The paper's networks on the demo's synthetic data, briefly trained."""
    config = demo()
    _paper_architecture(config)
    config.train.num_steps = 500
    config.forecaster.num_steps = 1000
    return config


VARIANTS = {f.__name__: f for f in (demo, tiny, paper, quick_run, study, study_tiny)}


def get_config(arg: str = "demo") -> ml_collections.ConfigDict:
    return config_lib.variant(VARIANTS, arg, __name__)
