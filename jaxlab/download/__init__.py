"""`jaxlab download DATASET --to DIR`: the five public datasets, resumable and verified.

    from jaxlab import download
    download.download("gravityspy", "/data/gravityspy")               # v1d1, record 1476551
    download.download("hrrr", "/data/hrrr", start="2024-06-01", end="2024-06-14",
                      init_hours="0-23", forecast_hours="0", allow_missing="2%")
    download.download("greenearthnet", "/data/greenearthnet", tracks="train,ood-t_chopped")

`help_text()` is the table of datasets, sizes and options that `jaxlab download --help` prints.
Common options (HTTP sources): retries (5), backoff_s (1.0), timeout_s (60), workers (4 files at
a time), progress (True), check_space (True). Base URLs also come from JAXLAB_HRRR_URL,
JAXLAB_ZENODO_URL, JAXLAB_GREENEARTHNET_URL. Each call prints the files and bytes it will fetch
with the free disk space, then a summary, and returns a `fetch.Summary`; a failure is one
`DownloadError` line. Files a source lacks (HRRR's archive gaps) are listed, the rest is
downloaded, and `MissingFilesError` is raised at the end unless `allow_missing` accepts them (the
command's exit status is then EXIT_MISSING). Only local-server tests have exercised these paths
(docs/data.md says what was checked against which public reference).
"""

from __future__ import annotations

import inspect
import os
import shutil
import tarfile
import textwrap

from jaxlab.download import fetch, kaggle_data, report, sources

DATASETS = ("hrrr", "gravityspy", "greenearthnet", "icecube", "olist")
DownloadError = fetch.DownloadError
ChecksumError = fetch.ChecksumError
MissingFilesError = fetch.MissingFilesError
EXIT_MISSING = 3  # the command's exit status when files are missing beyond allow_missing
_COMMON = tuple(f.name for f in fetch.dataclasses.fields(fetch.Options) if f.name != "chunk_bytes")
# (source, size) per dataset, for the help; sizes as the sources state them or estimated (marked).
ABOUT = {
    "hrrr": (
        "NOAA HRRR surface files on AWS (noaa-hrrr-bdp-pds), the 7 weather fields by .idx byte "
        "ranges",
        "a few MB per hour instead of ~100-150 MB for the whole file (estimate); 2 weeks of "
        "hourly analyses: a few GB",
    ),
    "gravityspy": (
        "Zenodo: Gravity Spy training set v1d1 (record 1476551; v1d0: 1476156), md5-checked",
        "trainingsetv1d1.h5 3.1 GB + metadata CSV a few MB; pngs=true adds the PNG tarball "
        "(several GB)",
    ),
    "greenearthnet": (
        "the EarthNet S3 store (bucket earthnet, earthnet2021x/<track>/), minicubes as NetCDF",
        "about 1 TB for every track (the toolkit's advice); limit=N for a quick look",
    ),
    "icecube": (
        "Kaggle competition icecube-neutrinos-in-deep-ice (kaggle client, rules accepted)",
        "660 batch files, of the order of 100 GB in all (unverified); sizes printed first",
    ),
    "olist": (
        "Kaggle dataset olistbr/brazilian-ecommerce (kaggle client)",
        "about 45 MB zipped, nine CSVs",
    ),
}


def _split(options: dict) -> tuple[fetch.Options, dict]:
    common = {k: options.pop(k) for k in _COMMON if k in options}
    return fetch.Options(**common), options


def _extract_pngs(archive: str, to: str) -> str:
    """Unpacks the PNG tarball into `<to>/png/<label>/<split>/...` once (a marker file records
    it); a single wrapping folder in the archive is stripped. Returns the png folder."""
    png = os.path.join(to, "png")
    done = os.path.join(png, ".extracted")
    if os.path.exists(done):
        return png
    tmp = png + ".extracting"
    report.say(f"gravityspy: unpacking {archive} into {png}")
    with tarfile.open(archive) as tar:
        tar.extractall(tmp, filter="data")  # refuses absolute paths and links leaving tmp
    top = tmp
    while True:
        entries = [e for e in os.listdir(top) if not e.startswith(".")]
        if len(entries) == 1 and os.path.isdir(os.path.join(top, entries[0])):
            top = os.path.join(top, entries[0])
        else:
            break
    if os.path.exists(png):
        raise DownloadError(f"{png} exists but was not unpacked by jaxlab; move it away and rerun.")
    os.replace(top, png)
    if top != tmp:
        shutil.rmtree(tmp)
    with open(done, "w") as f:
        f.write(os.path.basename(archive) + "\n")
    return png


def download_hrrr(
    to: str,
    *,
    start,
    end=None,
    init_hours=0,
    forecast_hours=0,
    fields=sources.HRRR_FIELDS,
    allow_missing=0,
    url: str | None = None,
    **options,
) -> fetch.Summary:
    """HRRR surface files `hrrr.YYYYMMDD/conus/hrrr.tHHz.wrfsfcfFF.grib2` holding only the seven
    weather fields (or `fields`), for every day in [start, end] and every init / forecast hour
    (ints, lists, or strings like "0-23" / "0,6,12"); `fields` also as "NAME:LEVEL;..."
    (the `.idx` names, e.g. "CAPE:surface"); forecast hours past a cycle's length (18 h
    but for 00/06/12/18z, 48 h) are left out with a note. Files the archive lacks or has without
    every field are listed and skipped; more than `allow_missing` (a count, "2%", "all") of them
    raises MissingFilesError after the rest is downloaded. Size- and GRIB2-checked (NOAA
    publishes no sums)."""
    opts, rest = _split(options)
    if rest:
        raise TypeError(f"hrrr: unknown options {sorted(rest)}.")
    fetch.allowed_missing(allow_missing, 1)  # a bad value fails before any request
    if isinstance(fields, str):  # from the command line: "TMP:2 m above ground;CAPE:surface"
        pairs = [f.partition(":") for f in fields.split(";") if f.strip()]
        if not pairs or any(not sep or not name.strip() for name, sep, _ in pairs):
            raise ValueError(f"hrrr: fields={fields!r}: expected 'NAME:LEVEL;NAME:LEVEL'.")
        fields = tuple((name.strip(), level.strip()) for name, _, level in pairs)
    remotes, missing, requested = sources.hrrr_remotes(
        to,
        start=start,
        end=end,
        init_hours=init_hours,
        forecast_hours=forecast_hours,
        fields=fields,
        url=url,
        options=opts,
    )
    summary = fetch.fetch_all("hrrr", remotes, to, opts, missing=missing, skip_not_found=True)
    return fetch.check_missing(summary, allow_missing, requested)


def download_gravityspy(
    to: str,
    *,
    version: str = sources.GRAVITYSPY_VERSION,
    pngs: bool = False,
    extract: bool = True,
    record: str | None = None,
    url: str | None = None,
    **options,
) -> fetch.Summary:
    """The `version`'s h5 and metadata CSV (v1d1: `trainingsetv1d1.h5` and
    `trainingset_v1d1_metadata.csv`, the names the glitch config reads; v1d0 possible), and with
    `pngs` its PNG tarball, unpacked into `<to>/png` unless `extract=False`; md5-checked against
    Zenodo. `record` overrides the version's Zenodo record."""
    opts, rest = _split(options)
    if rest:
        raise TypeError(f"gravityspy: unknown options {sorted(rest)}.")
    remotes = sources.gravityspy_remotes(
        version=version, pngs=pngs, record=record, url=url, options=opts
    )
    summary = fetch.fetch_all("gravityspy", remotes, to, opts)
    if pngs and extract:
        for remote in remotes:
            if remote.path.endswith((".tar.gz", ".tgz")):
                _extract_pngs(os.path.join(os.path.abspath(to), remote.path), os.path.abspath(to))
    return summary


def download_greenearthnet(
    to: str,
    *,
    tracks="train",
    limit: int | None = None,
    etag_md5: bool = True,
    url: str | None = None,
    **options,
) -> fetch.Summary:
    """Minicubes `<to>/<track>/<region>/<cube>.nc` of `tracks` ("train,ood-t_chopped", "all");
    `limit` takes the first N cubes per track (a quick look). `workers` cubes at a time.
    Size-checked, and md5-checked by the store's single-part ETags unless `etag_md5=False`; the
    run stops when most files fail that check."""
    opts, rest = _split(options)
    if rest:
        raise TypeError(f"greenearthnet: unknown options {sorted(rest)}.")
    remotes = sources.greenearthnet_remotes(
        tracks=tracks, limit=limit, url=url, etag_md5=etag_md5, options=opts
    )
    hint = "the store's ETags may not be md5 sums; rerun with etag_md5=false (sizes still checked)"
    return fetch.fetch_all("greenearthnet", remotes, to, opts, sums_hint=hint)


def download_icecube(to: str, *, batches="1", **options) -> fetch.Summary:
    """Kaggle competition files: geometry, train meta and `train/batch_<i>.parquet` for `batches`
    ("1-10"), each checked against its listed size; needs the kaggle client, credentials it
    accepts and the competition's rules accepted. `retries`/`backoff_s` apply to the client's
    calls (429, 5xx), `progress` to its bars; the transfers are the client's."""
    opts, unknown = _split(options)
    if unknown:
        raise TypeError(f"icecube: unknown options {sorted(unknown)}.")
    return kaggle_data.download_icecube(to, batches=batches, options=opts)


def download_olist(to: str, **options) -> fetch.Summary:
    """The nine Olist CSVs from Kaggle (needs the kaggle client and credentials it accepts)."""
    opts, unknown = _split(options)
    if unknown:
        raise TypeError(f"olist: unknown options {sorted(unknown)}.")
    return kaggle_data.download_olist(to, options=opts)


FUNCTIONS = {
    "hrrr": download_hrrr,
    "gravityspy": download_gravityspy,
    "greenearthnet": download_greenearthnet,
    "icecube": download_icecube,
    "olist": download_olist,
}


def download(dataset: str, to: str, **options) -> fetch.Summary:
    """Downloads `dataset` (one of DATASETS) into the folder `to`; see the module docstring."""
    if dataset not in FUNCTIONS:
        raise ValueError(f"unknown dataset {dataset!r}; choose one of {', '.join(DATASETS)}.")
    if not to:
        raise ValueError(f"{dataset}: give the destination folder (--to DIR).")
    if os.path.exists(to) and not os.path.isdir(to):
        raise DownloadError(f"{to} is a file; --to must be a folder.")
    return FUNCTIONS[dataset](to, **options)


def _options_of(function) -> list[str]:
    """NAME=DEFAULT of a downloader's own keyword options ("NAME (required)" when none)."""
    out = []
    for name, parameter in inspect.signature(function).parameters.items():
        if parameter.kind is not inspect.Parameter.KEYWORD_ONLY:
            continue
        default = parameter.default
        if name == "fields":
            out.append("fields=NAME:LEVEL;... (the seven weather fields)")
        elif default is inspect.Parameter.empty:
            out.append(f"{name} (required)")
        else:
            out.append(f"{name}={'' if default is None else default}")
    return out


def help_text() -> str:
    """The datasets with their sources, sizes and options, for `jaxlab download --help`."""
    lines = ["datasets (jaxlab download DATASET --to=DIR [NAME=VALUE ...]):"]
    for name in DATASETS:
        source, size = ABOUT[name]
        options = ", ".join(_options_of(FUNCTIONS[name])) or "(none)"
        lines.append(f"  {name}")
        for label, text in (("source", source), ("size", size), ("options", options)):
            lines += textwrap.wrap(
                text, 96, initial_indent=f"      {label + ':':<9}", subsequent_indent=" " * 15
            )
    common = ", ".join(f"{f.name}={f.default}" for f in fetch.dataclasses.fields(fetch.Options)
                       if f.name in _COMMON)  # fmt: skip
    lines += textwrap.wrap(f"common options: {common}", 96, subsequent_indent="  ")
    lines += [
        "  (HTTP sources; for icecube/olist retries, backoff_s and progress apply to the client)",
        "examples:",
        "  jaxlab download gravityspy --to=/data/gravityspy",
        "  jaxlab download hrrr --to=/data/hrrr start=2024-06-01 end=2024-06-14 init_hours=0-23 "
        "forecast_hours=0 allow_missing=2%",
        "  jaxlab download icecube --to=/data/icecube batches=1-10",
        "hrrr forecast hours: 0-48 from the 00/06/12/18z cycles, 0-18 from the others.",
        f"exit status: 0 all there; 1 an error (one line); {EXIT_MISSING} finished but files are "
        "missing at the source beyond allow_missing (listed; the rest is downloaded).",
        "Kaggle credentials (the client's): KAGGLE_API_TOKEN, ~/.kaggle/access_token, or legacy "
        "~/.kaggle/kaggle.json / KAGGLE_USERNAME+KAGGLE_KEY. Details: docs/data.md.",
    ]
    return "\n".join(lines) + "\n"
