"""GravityViT on Gravity Spy (jaxlab/glitch): 22-class LIGO glitch classification.

Demo (synthetic Gravity Spy h5 in the published layout, a small multi-view ViT, 2-core CPU):
  python scripts/train.py --config=glitch:demo --workdir=runs/glitch
  python scripts/evaluate.py --config=glitch:demo --workdir=runs/glitch
Expect: test accuracy 0.986 measured (>= 0.90; chance 1/22, majority class 0.08), about 2 minutes;
runs/glitch/eval/test/ holds metrics.json, classification_report.txt, confusion_matrix.png,
view_importance.png and predictions.csv.

Real data (trainingsetv1d1.h5 + trainingset_v1d1_metadata.csv in DIR; jaxlab/glitch/README.md):
  python scripts/train.py --config=glitch:vit_b16_multiview --workdir=runs/gvit \
      --config.data.dir=DIR --config.model.pretrained=vit_b16.safetensors
  python scripts/evaluate.py --config=glitch:vit_b16_multiview --workdir=runs/gvit \
      --config.data.dir=DIR
Expect (literature, not reproduced here): CNN ensemble 98.2% (Bahaadini et al. 2018), transfer
learning > 98.8% (George et al.); the seed reports its multi-view ViT in that range.

Benchmark, ViT-B/16 multi-view (4 x 224 x 224), batch 2 (8 images), measured on a 2-core CPU as
one device, shared with other jobs (load average ~10, so times are inflated and noisy):
  python scripts/benchmark.py --tasks=glitch --variant=vit_b16_multiview[_bf16] --steps=2 \
      --warmup=1 --batch_size=2
  fp32: step 44.4 s, 0.18 images/s, compile 54 s (+ lower 7.9 s), 850 GFLOP/step, MFU 32% of the
        measured fp32 matmul peak (0.059 TFLOP/s), XLA memory 1.0 GiB arguments + 2.1 GiB temp.
  bf16: step 40.5 s, 0.20 images/s, compile 52 s (+ lower 6.4 s), 855 GFLOP/step, MFU 95% of the
        measured bf16 matmul peak (0.022 TFLOP/s; this CPU has no fast bf16 matmul, 54% of the
        fp32 peak of the same run), 1.0 GiB arguments + 2.1 GiB temp.
Same commands on the idle machine (load < 2): fp32 13.6 s/step, 0.59 images/s, compile 12 s,
MFU 35% of the measured fp32 peak (0.18 TFLOP/s), host peak RSS 4.0 GiB; bf16 13.8 s/step,
compile 23 s (this CPU's bf16 matmul peak, 0.08 TFLOP/s, is below its fp32 one, so bf16 gains
nothing here and its MFU is not meaningful).
GPU numbers need a GPU run of the same command (raise --batch_size).

Variants: demo, tiny (tests), vit_b16_multiview (the seed's setup), vit_b16_multiview_bf16 (the
same with bfloat16 compute), vit_b16_single, cnn_baseline.
Training counts epochs: num_steps = num_epochs * (train size // global_batch_size); validation,
checkpointing (best by val_accuracy + latest) and early stopping happen once per epoch.
"""

from __future__ import annotations

import ml_collections

from jaxlab.configs import common

DURATIONS = ("0.5", "1.0", "2.0", "4.0")


def get_config(arg: str = "demo") -> ml_collections.ConfigDict:
    config = common.get_common()
    config.task = "jaxlab.glitch"

    config.data = d = ml_collections.ConfigDict()
    d.dir = ""  # defaults to <workdir>/data
    d.synthetic = False  # write the synthetic dataset into data.dir first when missing
    d.format = "h5"  # "h5" (trainingsetv1d1.h5) or "png" (the unpacked tarball)
    d.h5_name = "trainingsetv1d1.h5"
    d.metadata_name = "trainingset_v1d1_metadata.csv"  # optional; "" to ignore
    d.png_dir = "png"  # the PNG tree, relative to data.dir
    # PIL box (left, top, right, bottom) of the plot area in the tarball PNGs; None = whole image.
    d.png_crop = ml_collections.config_dict.placeholder(tuple)
    d.multi_view = True  # (4, S, S, 3) per sample; False: one view, data.view
    d.durations = DURATIONS
    d.view = "1.0"
    d.image_size = 224
    d.mean = 0.5  # (x - mean) / std, the normalisation of timm's augreg ViT weights
    d.std = 0.5
    d.use_class_weights = False  # weight the loss by n / (C n_c) of the training split
    d.augment_max_shift = 0  # random time shift of up to this many pixels (0 = none)
    d.num_threads = 2  # grain read threads
    # Keep resized views in memory after the first read: for small sets read every epoch (the
    # real set at 224 px would take ~6 GB, so off by default).
    d.cache = False
    # Synthetic writer (see jaxlab/glitch/synthetic.py).
    d.synthetic_samples_per_class = 45
    d.synthetic_imbalance_power = 0.35
    d.synthetic_min_per_class = 24
    d.synthetic_image_shape = (140, 170)
    d.synthetic_png_per_split = 0

    config.model = m = ml_collections.ConfigDict()
    m.name = "vit_multiview"  # "vit_multiview", "vit" (single view) or "cnn"
    m.vit_size = "B"  # "Ti", "S", "B" (model.VIT_SIZES) or "" for dim/depth/num_heads below
    m.patch_size = 16
    m.dim = 768
    m.depth = 12
    m.num_heads = 12
    m.mlp_ratio = 4.0
    m.dropout = 0.0
    m.drop_path = 0.1
    m.fusion_heads = 8
    m.view_embedding = True
    m.head_hidden = 512
    m.head_dropout = 0.1
    m.dtype = "float32"  # compute dtype: "float32" or "bfloat16" (params stay float32)
    m.pretrained = ""  # timm ViT .safetensors to initialise the encoder from
    m.pos_embed_interpolation = "bicubic"  # when the checkpoint's image size differs
    m.cnn_features = (32, 64)
    m.cnn_kernel = 5
    m.cnn_dense = 256
    m.cnn_dropout = 0.5

    config.loss = ml_collections.ConfigDict()
    config.loss.name = "cross_entropy"  # or "focal"
    config.loss.label_smoothing = 0.1
    config.loss.focal_gamma = 2.0

    t = config.train
    t.num_epochs = 50
    t.warmup_epochs = 5
    t.patience = 10  # early stopping: epochs without a better val_accuracy
    t.global_batch_size = 32
    t.log_every = 50
    t.num_steps = 0  # derived from num_epochs; a positive value overrides it
    t.eval_every = 0  # unused: validation runs every epoch
    t.ckpt_every = 0  # unused: checkpoints at every epoch end and on SIGTERM

    config.eval.split = "test"
    config.eval.global_batch_size = 64
    config.eval.checkpoint = "best"
    config.eval.best_metric = "val_accuracy"
    config.eval.best_mode = "max"

    o = config.optim
    o.name = "adamw"
    o.lr = 1e-4
    o.weight_decay = 0.05
    o.schedule = "warmup_cosine"  # warmup_steps is set from train.warmup_epochs
    o.clip_norm = 1.0

    if arg == "vit_b16_multiview":
        pass
    elif arg == "vit_b16_multiview_bf16":  # bf16 compute (params and optimizer stay float32)
        m.dtype = "bfloat16"
    elif arg == "vit_b16_single":
        d.multi_view = False
        m.name = "vit"
    elif arg == "cnn_baseline":
        m.name = "cnn"
        d.image_size = 112  # merged 2 x 2 view: 224 x 224 input
        o.lr = 1e-3
    elif arg in ("demo", "tiny"):
        d.synthetic = True
        d.cache = True
        d.synthetic_image_shape = (70, 85)  # half the published size: a ~70 MB h5
        d.image_size = 32
        m.vit_size = ""
        m.patch_size = 8
        m.dim = 64
        m.depth = 2
        m.num_heads = 4
        m.drop_path = 0.0
        m.fusion_heads = 4
        m.head_hidden = 128
        t.num_epochs = 20
        t.warmup_epochs = 2
        t.log_every = 20
        o.lr = 2e-3
        o.weight_decay = 1e-4
        if arg == "tiny":  # tests: seconds on CPU
            d.synthetic_samples_per_class = 12
            d.synthetic_min_per_class = 12
            d.synthetic_imbalance_power = 0.3
            d.synthetic_image_shape = (28, 34)
            d.synthetic_png_per_split = 1
            d.image_size = 32
            m.dim = 32
            m.depth = 1
            m.head_hidden = 32
            t.num_epochs = 10
            t.warmup_epochs = 1
            t.global_batch_size = 16
            t.log_every = 4
            config.eval.global_batch_size = 32
    else:
        raise ValueError(
            f"config glitch: unknown variant {arg!r}; use demo, tiny, vit_b16_multiview, "
            "vit_b16_multiview_bf16, vit_b16_single or cnn_baseline."
        )
    return config
