"""Glitch classes of new, unlabelled Gravity Spy samples: PNGs or an h5 -> `predictions.csv`.

`predict(model, inputs, out)` takes a training workdir or an exported bundle (`jaxlab export`;
both give bitwise the same predictions) and one of:

  - a folder of Gravity Spy PNGs, `<ifo>_<id>_spectrogram_<dur>.png`, at any depth (the
    tarball's tree, or one glitch's four PNGs); a single PNG path stands for its glitch's four;
  - an h5 file: every group holding one dataset per duration, `'<dur>.png'`, is a sample named
    by the group (the published `h5[label][split][id]`, labels unused, or an unlabelled
    `h5[id]`); option `group=/path` restricts it to one group or subtree.

    jaxlab predict --model=runs/glitch/bundle --input=new_glitches/ --out=preds [plots=true]

writes `preds/predictions.csv` (id, source, top1..3 class and probability, view_weight_<dur> for
each view) and with `plots=true` one figure per sample, `preds/plots/<id>.png` (the views and
their fusion weights). Class names are the label set the model was trained with
(`config.data.classes`, recorded in the bundle / workdir config). PNGs are cropped to
`config.data.png_crop` (option `png_crop=l,t,r,b` or `none`) and converted to gray as Gravity
Spy's h5 was (`data.png_to_gray`), so a PNG and its h5 dataset give the same prediction.
"""

from __future__ import annotations

import collections
import contextlib
import csv
import math
import os

import h5py
import jax
import numpy as np
from absl import logging
from PIL import Image

from jaxlab.core import bundle as bundle_lib
from jaxlab.core import loop, portable
from jaxlab.glitch import data, plots
from jaxlab.glitch import model as model_lib

PREDICTIONS_FILE = "predictions.csv"
PLOTS_DIR = "plots"
DEMO_INPUT_FILE = "predict_input.h5"
TOP_K = 3


def png_samples(path: str, durations: tuple[str, ...]) -> list[tuple[str, list[str]]]:
    """[(gravityspy id, [PNG path per duration])] of a folder (searched recursively) or of the
    glitch of one PNG file. An id with a missing duration, or found twice, is an error."""
    if os.path.isfile(path):
        match = data.PNG_PATTERN.match(os.path.basename(path))
        if not match:
            raise ValueError(
                f"{path}: not named <ifo>_<id>_spectrogram_<dur>.png; cannot find its glitch's "
                "other durations."
            )
        directory = os.path.dirname(path) or "."
        names = [
            os.path.join(directory, name)
            for name in os.listdir(directory)
            if (other := data.PNG_PATTERN.match(name)) and other["id"] == match["id"]
        ]
    else:
        names = sorted(
            os.path.join(directory, name)
            for directory, _, files in os.walk(path)
            for name in files
            if name.endswith(".png")
        )
    found: dict[str, dict[str, str]] = collections.defaultdict(dict)
    skipped = 0
    for name in sorted(names):
        match = data.PNG_PATTERN.match(os.path.basename(name))
        if not match:
            skipped += 1
            continue
        views = found[match["id"]]
        if match["dur"] in views:
            raise ValueError(
                f"{name}: gravityspy_id {match['id']!r} duration {match['dur']} also in "
                f"{views[match['dur']]}; expected one PNG per id and duration."
            )
        views[match["dur"]] = name
    if skipped:
        logging.warning("%s: %d PNGs not named like Gravity Spy's are not read.", path, skipped)
    if not found:
        raise ValueError(f"{path}: no <ifo>_<id>_spectrogram_<dur>.png files.")
    samples = []
    for gid, views in sorted(found.items()):
        missing = [d for d in durations if d not in views]
        if missing:
            raise ValueError(
                f"{next(iter(views.values()))}: gravityspy_id {gid!r} has no PNG for durations "
                f"{missing}; the model needs {list(durations)}."
            )
        samples.append((gid, [views[d] for d in durations]))
    return samples


def h5_samples(path: str, durations: tuple[str, ...], group: str = "/") -> list[tuple[str, str]]:
    """[(id, group path)] of every group of `path` under `group` holding all `<dur>.png`."""
    names = {f"{d}.png" for d in durations}
    samples: list[tuple[str, str]] = []
    try:
        with h5py.File(path, "r") as f:
            if group not in f or not isinstance(f[group], h5py.Group):
                raise ValueError(f"{path}: no group {group!r} (option group=).")

            def visit(node: h5py.Group) -> None:
                present = names & set(node.keys())
                if present:
                    if present != names:
                        raise ValueError(
                            f"{path}: {node.name} has datasets {sorted(present)}; expected one "
                            f"per duration {sorted(names)}."
                        )
                    samples.append((node.name.rstrip("/").rsplit("/", 1)[-1] or "/", node.name))
                    return
                for child in node.values():
                    if isinstance(child, h5py.Group):
                        visit(child)

            visit(f[group])
    except (OSError, RuntimeError, KeyError) as e:
        raise ValueError(f"{path}: not a readable HDF5 file ({type(e).__name__}: {e}).") from e
    if not samples:
        raise ValueError(f"{path}: no group under {group!r} holds datasets {sorted(names)}.")
    first: dict[str, str] = {}
    for gid, where in samples:
        if gid in first:
            raise ValueError(
                f"{path}: sample id {gid!r} at {first[gid]} and {where}; expected unique ids."
            )
        first[gid] = where
    return samples


def read_h5_views(f: h5py.File, path: str, where: str, durations) -> list[np.ndarray]:
    views = []
    for dur in durations:
        dataset = f[f"{where}/{dur}.png"]
        data.check_view_layout(dataset, f"{path}: {where}/{dur}.png")
        try:
            array = np.asarray(dataset)
        except OSError as e:
            raise ValueError(f"{path}: {where}/{dur}.png: unreadable dataset ({e}).") from e
        views.append(data.decode_view(array, f"{path}: {where}/{dur}.png"))
    return views


def read_png_views(paths: list[str], crop: tuple[int, ...] | None) -> list[np.ndarray]:
    views = []
    for path in paths:
        try:
            png = Image.open(path)
            png.load()
        except OSError as e:
            raise ValueError(f"{path}: not a readable PNG ({e}).") from e
        with png:
            if crop:
                if crop[2] > png.width or crop[3] > png.height:
                    raise ValueError(
                        f"{path}: crop box {crop} lies outside the {png.width} x {png.height} "
                        "image; set png_crop= (or config.data.png_crop) to the plot area."
                    )
                png = png.crop(crop)
            views.append(data.png_to_gray(png, path))
    return views


def _bool(name: str, value) -> bool:
    if isinstance(value, bool):
        return value
    if str(value).lower() in ("true", "yes", "1"):
        return True
    if str(value).lower() in ("false", "no", "0"):
        return False
    raise ValueError(f"predict option {name}={value!r}: expected true or false.")


def _crop(value, config) -> tuple[int, ...] | None:
    if value is None:
        value = config.data.get("png_crop")
    if value is None or (isinstance(value, str) and value.lower() in ("none", "")):
        return None
    numbers = value.split(",") if isinstance(value, str) else list(value)
    try:
        box = tuple(int(v) for v in numbers)
    except ValueError:
        box = ()
    if len(box) != 4:
        raise ValueError(f"predict option png_crop={value!r}: expected left,top,right,bottom.")
    return box


def _floor6(p: float) -> float:
    """p rounded down to 6 decimals, so written top-k probabilities never sum above 1."""
    return math.floor(float(p) * 1e6) / 1e6


def network(config, batch_size: int | None = None) -> portable.Network:
    """The predict network: {"images": [B, ...]} -> {"probs": [B, C], "view_weights": [B, V]}
    (eval mode; what a bundle exports as its StableHLO predict)."""
    apply = make_apply(config, len(config.data.classes))
    batch = batch_size or 32  # predict's default batch_size
    images = jax.ShapeDtypeStruct((batch, *model_lib.input_shape(config)), np.float32)

    def fn(params, inputs):
        probs, weights = apply(params, inputs["images"])
        return {"probs": probs, "view_weights": weights}

    return portable.Network(fn=fn, inputs={"images": images})


def make_apply(config, num_classes: int):
    """Jitted (params, images [B, ...]) -> (probs [B, C], view_weights [B, V]), eval mode."""
    model = model_lib.make_model(config, num_classes)

    def apply(params, images):
        out = model.apply({"params": params}, images, train=False)
        return jax.nn.softmax(out["logits"], axis=-1), out["view_weights"]

    return jax.jit(apply)


def predict(
    model: str,
    inputs: str,
    out: str,
    config=None,
    plots: str | bool = False,
    batch_size: str | int = 32,
    group: str = "/",
    png_crop: str | None = None,
    engine: str = "python",
) -> list[str]:
    """Writes `out/predictions.csv` (and with `plots` a figure per sample); returns the paths.

    Options come from the CLI as strings: plots (true/false), batch_size (samples per compiled
    call; the last batch is padded), group (an h5 group), png_crop (l,t,r,b or none), engine
    (python, the default: the model's code; stablehlo: the bundle's StableHLO predict, without
    the model's code, batches of its size; auto: stablehlo when the bundle carries one).
    """
    make_plots = _bool("plots", plots)
    batch_size = int(batch_size)
    if batch_size < 1:
        raise ValueError(f"predict option batch_size={batch_size}: expected a positive integer.")
    apply = None
    if portable.use_artefact(model, engine):  # batches of the artefact's size
        config, info = portable.bundle_config(model, "jaxlab.glitch")
        params, batch_size, hlo = None, portable.input_batch(model), portable.load_callable(model)

        def apply(_, images):
            out = hlo({"images": images})
            return out["probs"], out["view_weights"]

    else:
        config, params, info = bundle_lib.load_model(model, config, task="jaxlab.glitch")
    dc = config.data
    durations = tuple(dc.durations) if dc.multi_view else (dc.view,)
    if not os.path.exists(inputs):
        raise FileNotFoundError(f"{inputs}: no such file or folder (PNGs or an h5 file).")
    with contextlib.ExitStack() as stack:
        if os.path.isfile(inputs) and not inputs.lower().endswith(".png"):
            samples = h5_samples(inputs, durations, group)
            h5 = stack.enter_context(h5py.File(inputs, "r"))
            read = lambda where: read_h5_views(h5, inputs, where, durations)  # noqa: E731
        else:
            samples = png_samples(inputs, durations)
            crop = _crop(png_crop, config)
            read = lambda paths: read_png_views(paths, crop)  # noqa: E731
        written, counts = predict_samples(
            config, params, samples, read, out, batch_size, make_plots, apply
        )
    logging.info(
        "Predicted %d glitches with step %d of %s -> %s; most frequent: %s",
        len(samples),
        info["checkpoint_step"],
        model,
        written[0],
        ", ".join(f"{c} {n}" for c, n in counts.most_common(3)),
    )
    return written


def predict_samples(config, params, samples, read, out, batch_size, make_plots, apply=None):
    """The batched pass over `samples` ([(id, source)], `read(source)` -> views): writes the CSV
    (and figures); returns (files written, counts of top-1 classes). `apply(params, images)` ->
    (probs, view_weights); default `make_apply` (the Python network)."""
    dc = config.data
    classes = list(dc.classes)
    durations = tuple(dc.durations) if dc.multi_view else (dc.view,)

    apply = apply or make_apply(config, len(classes))
    shape = model_lib.input_shape(config)
    os.makedirs(out, exist_ok=True)
    csv_path = os.path.join(out, PREDICTIONS_FILE)
    written = [csv_path]
    if make_plots:
        os.makedirs(os.path.join(out, PLOTS_DIR), exist_ok=True)
    counts: collections.Counter = collections.Counter()
    header = ["id", "source"]
    for k in range(1, TOP_K + 1):
        header += [f"top{k}_class", f"top{k}_prob"]
    header += [f"view_weight_{d}" for d in durations]
    starts = range(0, len(samples), batch_size)
    with open(csv_path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        for start in loop.progress_bar(starts, desc="glitch predict"):
            chunk = samples[start : start + batch_size]
            views = [[data.resize(v, dc.image_size) for v in read(src)] for _, src in chunk]
            images = np.zeros((batch_size, *shape), np.float32)
            for i, sample_views in enumerate(views):
                images[i] = data.to_record_image(sample_views, dc.multi_view, dc.mean, dc.std)
            probs, weights = jax.device_get(apply(params, images))
            if probs.shape[1] != len(classes):
                raise ValueError(
                    f"the model has {probs.shape[1]} outputs; its config.data.classes "
                    f"names {len(classes)}."
                )
            for i, (gid, src) in enumerate(chunk):
                top = np.argsort(-probs[i], kind="stable")[:TOP_K]
                counts[classes[top[0]]] += 1
                row = [gid, src if isinstance(src, str) else os.path.dirname(src[0])]
                for c in top:
                    row += [classes[c], f"{_floor6(probs[i, c]):.6f}"]
                row += [f"{w:.6f}" for w in weights[i]]
                writer.writerow(row)
                if make_plots:
                    path = os.path.join(out, PLOTS_DIR, f"{gid}.png")
                    plots.prediction(
                        views[i],
                        durations,
                        weights[i],
                        [(classes[c], float(probs[i, c])) for c in top],
                        f"{gid}: {classes[top[0]]} ({probs[i, top[0]]:.2f})",
                        path,
                    )
                    written.append(path)
    return written, counts


def demo_input(config, workdir: str) -> str:
    """`workdir/predict_input.h5`: the held-out split's samples as `h5[gravityspy_id]['<dur>.png']`
    (the published arrays, no label or split groups): what a user with new glitches has."""
    data_dir = data.prepare(config, workdir)
    source = data.load(config, data_dir, config.eval.split)
    path = os.path.join(workdir, DEMO_INPUT_FILE)
    with h5py.File(path, "w") as f:
        for i, gid in enumerate(source.ids):
            for dur, view in zip(source.durations, source.read_views(i), strict=True):
                f.create_dataset(f"{gid}/{dur}.png", data=view[None], compression="gzip")
    return path
