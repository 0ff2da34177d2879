"""GreenEarthNet vegetation forecasting (jaxlab/vegetation): ConvLSTM encoder + Fourier decoder.

Ten 5-daily Sentinel-2 frames (50 days) of best-available-pixel reflectance, land cover and E-OBS
weather in; 20 frames (100 days) of reflectance deltas from the last BAP out; scored with the
official GreenEarthNet NDVI metrics (RMSE, NSE, R^2, |bias|, outperformance) against persistence.

Demo (synthetic minicubes written in the real NetCDF layout, 32 x 32 pixels, 2-core CPU):
  python scripts/train.py --config=vegetation:demo --workdir=runs/vegetation
  python scripts/evaluate.py --config=vegetation:demo --workdir=runs/vegetation
Expect on the 4 held-out synthetic `ood-t_chopped` cubes (`runs/vegetation/eval/ood-t_chopped/
metrics.json`): ndvi_rmse about 0.08 against persistence_ndvi_rmse about 0.21, ndvi_r2 about
0.82 against persistence's official ~1e-13 (a constant forecast), NSE about 0.68 against -0.98,
outperform_vs_persistence 1.0 (as the official scorer counts it); a few minutes on an idle 2-core
CPU. Measured before the random streams were named; a new seed stream moves these within noise.

Predict on new context-only cubes (no targets) from the demo model, official layout + PNGs:
  jaxlab export runs/vegetation --out runs/vegetation/bundle
  jaxlab predict --model=runs/vegetation/bundle --input=<track or tile folder, or a cube> \
      --out=runs/vegetation/predict

Real data (GreenEarthNet download, `<dir>/<track>/<region>/<cube>.nc`; data.dir has no default):
  python scripts/check_vegetation_data.py --data_dir=<greenearthnet> --tracks=train,ood-t_chopped
  python scripts/train.py --config=vegetation:paper --workdir=runs/veg_paper \
      --config.data.dir=<greenearthnet>
  python scripts/evaluate.py --config=vegetation:paper --workdir=runs/veg_paper \
      --config.data.dir=<greenearthnet> --config.eval.split=ood-t_chopped \
      [--config.eval.climatology_dir=<climatology predictions>/ood-t_chopped]
Published OOD-t numbers to compare with (unverified copy): Contextformer RMSE 0.14, R^2 0.62;
climatology RMSE 0.18, R^2 0.58; persistence RMSE 0.23.

Variants:
  demo           synthetic 32 x 32 cubes, a small ConvLSTM (8, 12, 16), 60 epochs.
  paper          the original setup: real data at 128 x 128, ConvLSTM (32, 48, 64), batch 32,
                 100 epochs, seed 0 (there was no other name for it before).
  paper_bf16     paper with bfloat16 compute (params stay float32).
  bench_b1, bench_b1_bf16   paper / paper_bf16 at batch 1 (the CPU benchmark sizes).
  tiny           demo shrunk for tests (16 x 16 cubes, 6 epochs of one step).
  study          the ablation study (jaxlab/vegetation/README.md "Study"): full model vs without
                 the weather residual vs without the DC term vs persistence and climatology, on
                 synthetic cubes with a planted weather response and trend:
                   jaxlab study --config=vegetation:study --workdir=runs/veg_study
  study_tiny     the study shrunk for a slow test; study_paper: the study on the real data.
Vary: `--config.data.dir`, `--config.data.cloud_mask` (s2_mask, s2_SCL, s2_dlmask, official),
`--config.model.hidden`, `--config.train.num_epochs`, `--config.eval.early_stopping_patience`,
`--config.eval.split`, `--config.eval.checkpoint` (best, latest or a step),
`--config.eval.climatology_dir`, `--config.data.cache` (auto, rebuild, off),
`--config.data.cache_dir`.
Benchmark numbers and the record cache: jaxlab/vegetation/README.md.
"""

from __future__ import annotations

import ml_collections

from jaxlab.configs import common
from jaxlab.core import config as config_lib

# The demo's headline: the evaluation metric, the baseline it should beat, which is better.
HEADLINE = ("ndvi_rmse", "persistence_ndvi_rmse", "lower")

# Which 7 of the 8 E-OBS variables, and why (the weather features are (20, 3 * 7) = (20, 21)):
#   tg, tn, tx  mean / min / max temperature: heat stress and the growing-degree clock (tx drives
#               heatwave damage, tn frost and night respiration);
#   rr          precipitation: water supply, the main driver of drought browning;
#   hu          relative humidity: with temperature it sets the vapour-pressure deficit that closes
#               stomata;
#   qq          global radiation: the energy for photosynthesis (and a clear-sky drought signal);
#   pp          sea-level pressure: persistent highs are the synoptic signature of dry spells.
# Left out: fg (wind speed), the E-OBS variable with the sparsest station network and shortest
# record (gaps in many cubes) and the weakest direct link to canopy greenness.
WEATHER_VARIABLES = ("eobs_tg", "eobs_tn", "eobs_tx", "eobs_rr", "eobs_hu", "eobs_qq", "eobs_pp")


def _shared() -> ml_collections.ConfigDict:
    """What demo and paper share: the data layout, the model, training in epochs."""
    config = common.get_common()
    config.task = "jaxlab.vegetation"
    config.seed = 0

    # --- Data ---
    d = config.data = ml_collections.ConfigDict()
    common.input_workers(config.data)  # data.workers: reader processes
    d.dir = ""  # root holding the track folders; defaults to <workdir>/data
    d.synthetic = True  # write synthetic minicubes there first (skipped for existing files)
    d.engine = "netcdf4"  # xarray engine reading and writing cubes: "netcdf4" or "h5netcdf"
    d.train_track = "train"
    d.val_track = "val_chopped"  # early stopping / best checkpoint
    d.image_size = 128  # lat = lon pixels the reader expects (128 in GreenEarthNet)
    d.cube_days = 150  # daily steps of one sample window (train cubes may be longer)
    d.train_window_stride = 150  # days between windows of longer (train) cubes; multiple of 5
    d.first_frame = 4  # isel(time=slice(first_frame, None, frame_stride))
    d.frame_stride = 5
    d.num_context = 10  # 50 days
    d.num_target = 20  # 100 days
    d.bands = ("s2_B02", "s2_B03", "s2_B04", "s2_B8A")
    # Clear-sky mask of the inputs and of the training targets: "s2_mask" (0 = clear),
    # "s2_SCL" (clear classes below), "s2_dlmask" (< 1 = clear) or "official" (dlmask and SCL,
    # as the scorer).
    d.cloud_mask = "s2_mask"
    d.scl_clear = (1, 2, 4, 5, 6, 7)
    # Best-available-pixel composite of the context (else raw frames); never-clear pixels take the
    # cube's median of clear pixels per band.
    d.bap_fill = True
    d.percentiles = (2.0, 98.0)  # normalisation range per band, on the training track
    d.stats_max_cubes = 256  # training cubes read to compute the percentiles
    d.weather_variables = WEATHER_VARIABLES
    d.climatology_window = 21  # days of the centred rolling-mean climatology
    # NaN E-OBS days in a window read: "error" (default: names file, variable and count) or
    # "interpolate" (linear over gaps, an all-NaN variable takes the training mean; counted in
    # the log). +-Inf and out-of-range weather are errors either way.
    d.on_weather_nan = "error"
    d.landcover_classes = (10, 20, 30, 40, 50, 60, 70, 80, 90, 100)  # ESA WorldCover, 10 channels
    d.landcover_aliases = ((95, 90),)  # mangroves (absent in Europe) -> herbaceous wetland
    d.year_center = 2019.0  # normalised year = (year - center) / scale
    d.year_scale = 3.0
    d.cache_records = False  # keep decoded records in memory (small datasets only)
    # Model-ready cache of the training and validation windows (vegetation/cache.py), written by
    # `jaxlab prepare` or on the first `train`: "auto" (use; build when missing; rebuild when stale
    # in the workdir, refuse when stale in data.cache_dir), "rebuild" (always) or "off" (read the
    # cubes every time). Context and target deltas as uint16 codes on a per-window scale
    # (|error| <= half a step, ~2e-5) or float32 (exact).
    d.cache = "auto"
    d.cache_dir = ""  # default <workdir>/cache; never inside data.dir
    d.cache_dtype = "uint16"
    d.cache_build_workers = 0  # processes writing the cache (-1: one per CPU core; 0: in-process)
    # Synthetic cubes (written when data.synthetic).
    d.synthetic_size = 128
    d.synthetic_cubes = (("train", 12), ("val_chopped", 4), ("ood-t_chopped", 4))
    d.synthetic_regions = ("32UNC", "33UUP", "31TEJ")
    # The study's planted structure (synthetic.Planted; 0 = none, the demo's cubes).
    d.synthetic_weather_effect = 0.0
    d.synthetic_trend = 0.0
    d.synthetic_climatology_years = 0

    # --- Model ---
    m = config.model = ml_collections.ConfigDict()
    m.hidden = (32, 48, 64)  # ConvLSTM layers
    m.kernel_size = 3
    m.norm_groups = 8  # GroupNorm groups (each layer width must divide)
    m.num_harmonics = 3  # K Fourier harmonics of the day of year
    m.coeff_scale_init = 0.1  # learnable scale of the Fourier coefficients (no weight decay)
    m.weather_hidden = 64
    m.weather_residual = True  # the weather term of the decoder (False: the study's ablation)
    m.fourier_dc = True  # the DC offset of the Fourier head (False: the study's ablation)
    m.dtype = "float32"

    # --- Loss ---
    config.loss = ml_collections.ConfigDict()
    config.loss.regression_weight = 5.0  # masked log-cosh on the deltas
    config.loss.edge_weight = 0.1  # spatial-gradient matching
    config.loss.underprediction_weight = 1.5  # where |pred delta| < |true delta|

    # --- Training (epochs over the training cubes) ---
    # Validation loss, early stopping and a checkpoint once an epoch (and on SIGTERM).
    common.epoch_cadence(config.train, num_epochs=100, warmup_epochs=5)
    common.override(config.train, global_batch_size=8, log_every=20, max_to_keep=2, keep_best=1)

    config.eval.split = "ood-t_chopped"
    config.eval.global_batch_size = 8
    config.eval.checkpoint = "best"
    config.eval.best_metric = "val_loss"
    config.eval.best_mode = "min"
    config.eval.early_stopping_patience = 10  # evaluations without a better val_loss
    config.eval.early_stopping_min_delta = 1e-4
    config.eval.pred_dir = ""  # official prediction layout; default <workdir>/eval/<split>/preds
    config.eval.climatology_dir = ""  # official climatology predictions, scored when given
    config.eval.num_plot_cubes = 1

    # warmup_steps is set from train.warmup_epochs; the plateau is judged once an epoch
    # (plateau_accumulation_size 0) and the rate halves after 5 of them without improvement.
    common.adamw(config.optim, lr=1e-3, weight_decay=1e-4, clip_norm=5.0, schedule="warmup_plateau")
    common.override(
        config.optim, plateau_factor=0.5, plateau_patience=5, plateau_accumulation_size=0
    )

    return config


def paper() -> ml_collections.ConfigDict:
    """The original setup on the real GreenEarthNet data."""
    config = _shared()
    config.data.synthetic = False  # data.dir must name the GreenEarthNet download
    config.data.cache_build_workers = -1  # the cache of the real data: every core
    config.train.global_batch_size = config.eval.global_batch_size = 32
    return config


def paper_bf16() -> ml_collections.ConfigDict:
    """paper with bfloat16 compute (params and optimizer stay float32)."""
    return common.bfloat16_compute(paper())


def bench_b1() -> ml_collections.ConfigDict:
    config = paper()
    config.train.global_batch_size = 1
    return config


def bench_b1_bf16() -> ml_collections.ConfigDict:
    config = paper_bf16()
    config.train.global_batch_size = 1
    return config


def demo() -> ml_collections.ConfigDict:
    """Synthetic 32 x 32 cubes and a small ConvLSTM."""
    config = _shared()
    d, m, t, o = config.data, config.model, config.train, config.optim
    common.override(d, synthetic_size=32, image_size=32, cache_records=True, stats_max_cubes=12)
    common.override(m, hidden=(8, 12, 16), norm_groups=4, weather_hidden=32)
    common.override(t, global_batch_size=4, num_epochs=60, log_every=30)
    common.override(config.eval, global_batch_size=4, early_stopping_patience=20)
    o.lr = 3e-3
    return config


def tiny() -> ml_collections.ConfigDict:
    """Tests: seconds on CPU."""
    config = demo()
    d, m, t = config.data, config.model, config.train
    common.override(d, synthetic_size=16, image_size=16, stats_max_cubes=8)
    d.synthetic_cubes = (("train", 8), ("val_chopped", 2), ("ood-t_chopped", 2))
    common.override(m, hidden=(4, 6, 8), norm_groups=2, num_harmonics=2, weather_hidden=8)
    t.global_batch_size = 8  # one per fake test device
    common.override(t, num_epochs=6, warmup_epochs=1, log_every=2)
    common.override(config.eval, global_batch_size=8, early_stopping_patience=10)
    return config


def with_study(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """Adds the ablation study's block (jaxlab/vegetation/study.py) to `config`."""
    config.study = sc = ml_collections.ConfigDict()
    sc.arms = ("full", "no_weather_residual", "no_dc", "persistence", "climatology")
    sc.reference = "full"
    sc.seeds = (0, 1)
    sc.bootstrap_resamples = 2000
    return config


def planted(data: ml_collections.ConfigDict) -> None:
    """The synthetic cubes' planted structure for the study (synthetic.Planted): NDVI that
    follows the target period's weather anomaly, a sustained per-cube trend, a climatology."""
    common.override(data, synthetic_weather_effect=0.15, synthetic_trend=0.2)
    data.synthetic_climatology_years = 3


def study() -> ml_collections.ConfigDict:
    """The ablation study on the demo's model, on cubes with the planted structure: 16
    training and 12 held-out cubes, 30 epochs, validation every 5, one seed (CPU time; add
    seeds with --config.study.seeds)."""
    config = with_study(demo())
    planted(config.data)
    config.data.synthetic_cubes = (("train", 16), ("val_chopped", 4), ("ood-t_chopped", 12))
    common.override(config.train, num_epochs=30, eval_every_epochs=5)
    config.eval.early_stopping_patience = 4
    config.study.seeds = (0,)
    return config


def study_paper() -> ml_collections.ConfigDict:
    """The ablation study on the real GreenEarthNet data at the paper's setup (one seed)."""
    config = with_study(paper())
    config.study.seeds = (0,)
    return config


def study_tiny() -> ml_collections.ConfigDict:
    """The study shrunk for a test: 16 x 16 cubes, one ConvLSTM layer of 8, one seed, 30 epochs
    with validation (its figure and a checkpoint) every 15: the planted gaps' intervals at 30
    epochs are those at 40 (tests/vegetation/test_study.py)."""
    config = with_study(tiny())
    d, m, t = config.data, config.model, config.train
    planted(d)
    d.synthetic_cubes = (("train", 16), ("val_chopped", 2), ("ood-t_chopped", 8))
    common.override(m, hidden=(8,), norm_groups=2, weather_hidden=16)
    common.override(t, num_epochs=30, eval_every_epochs=15, log_every=15)
    config.eval.early_stopping_patience = 0
    config.optim.lr = 1e-2
    common.override(config.study, seeds=(0,), bootstrap_resamples=500)
    return config


VARIANTS = {
    f.__name__: f
    for f in (
        demo,
        tiny,
        paper,
        paper_bf16,
        bench_b1,
        bench_b1_bf16,
        study,
        study_tiny,
        study_paper,
    )
}


def get_config(arg: str = "demo") -> ml_collections.ConfigDict:
    return config_lib.variant(VARIANTS, arg, __name__)
