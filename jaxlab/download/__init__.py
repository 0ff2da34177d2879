"""`jaxlab download DATASET --to DIR`: the five public datasets, resumable and verified.

    from jaxlab import download
    download.download("gravityspy", "/data/gravityspy")
    download.download("hrrr", "/data/hrrr", start="2024-06-01", end="2024-06-14",
                      init_hours="0-23", forecast_hours="0")
    download.download("greenearthnet", "/data/greenearthnet", tracks="train,ood-t_chopped")

    dataset        source (options)
    hrrr           NOAA AWS bucket noaa-hrrr-bdp-pds, `.idx` byte ranges
                   (start, end, init_hours, forecast_hours, fields, url)
    gravityspy     Zenodo record 1476156, md5 per file (pngs, extract, record, url)
    greenearthnet  the earthnet S3 store, ETag md5 (tracks, limit, etag_md5, url)
    icecube        Kaggle competition icecube-neutrinos-in-deep-ice (batches)
    olist          Kaggle dataset olistbr/brazilian-ecommerce

Common options (HTTP sources): retries (5), backoff_s (1.0), timeout_s (60), progress (True),
check_space (True). Base URLs also come from JAXLAB_HRRR_URL, JAXLAB_ZENODO_URL,
JAXLAB_GREENEARTHNET_URL. Each call prints the files and bytes it will fetch with the free disk
space, then a summary, and returns a `fetch.Summary`; any failure is one `DownloadError` line.
Only the local-server tests have exercised these paths (see docs/data.md).
"""

from __future__ import annotations

import os
import tarfile

from jaxlab.download import fetch, kaggle_data, report, sources

DATASETS = ("hrrr", "gravityspy", "greenearthnet", "icecube", "olist")
DownloadError = fetch.DownloadError
ChecksumError = fetch.ChecksumError
_COMMON = ("retries", "backoff_s", "max_backoff_s", "timeout_s", "progress", "check_space")


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
        import shutil

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
    url: str | None = None,
    **options,
) -> fetch.Summary:
    """HRRR surface files `hrrr.YYYYMMDD/conus/hrrr.tHHz.wrfsfcfFF.grib2` holding only the seven
    weather fields (or `fields`), for every day in [start, end] and every init / forecast hour
    (ints, lists, or strings like "0-23" / "0,6,12"). Size-checked (NOAA publishes no sums)."""
    opts, rest = _split(options)
    if rest:
        raise TypeError(f"hrrr: unknown options {sorted(rest)}.")
    remotes = sources.hrrr_remotes(
        to,
        start=start,
        end=end,
        init_hours=init_hours,
        forecast_hours=forecast_hours,
        fields=fields,
        url=url,
        options=opts,
    )
    return fetch.fetch_all("hrrr", remotes, to, opts)


def download_gravityspy(
    to: str,
    *,
    pngs: bool = False,
    extract: bool = True,
    record: str = sources.GRAVITYSPY_RECORD,
    url: str | None = None,
    **options,
) -> fetch.Summary:
    """`trainingsetv1d1.h5` and `trainingset_v1d1_metadata.csv` (and with `pngs` the PNG
    tarball, unpacked into `<to>/png` unless `extract=False`), md5-checked against Zenodo."""
    opts, rest = _split(options)
    if rest:
        raise TypeError(f"gravityspy: unknown options {sorted(rest)}.")
    remotes = sources.gravityspy_remotes(pngs=pngs, record=record, url=url, options=opts)
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
    `limit` takes the first N cubes per track (a quick look). Size-checked, and md5-checked by
    the store's ETag unless `etag_md5=False`."""
    opts, rest = _split(options)
    if rest:
        raise TypeError(f"greenearthnet: unknown options {sorted(rest)}.")
    remotes = sources.greenearthnet_remotes(
        tracks=tracks, limit=limit, url=url, etag_md5=etag_md5, options=opts
    )
    return fetch.fetch_all("greenearthnet", remotes, to, opts)


def download_icecube(to: str, *, batches="1", **options) -> fetch.Summary:
    """Kaggle competition files: geometry, train meta and `train/batch_<i>.parquet` for `batches`
    ("1-10"); needs the kaggle client, an API token and the competition's rules accepted. The
    common HTTP options are accepted and unused (the client does its own transfers)."""
    unknown = _split(options)[1]
    if unknown:
        raise TypeError(f"icecube: unknown options {sorted(unknown)}.")
    return kaggle_data.download_icecube(to, batches=batches)


def download_olist(to: str, **options) -> fetch.Summary:
    """The nine Olist CSVs from Kaggle (needs the kaggle client and an API token)."""
    unknown = _split(options)[1]
    if unknown:
        raise TypeError(f"olist: unknown options {sorted(unknown)}.")
    return kaggle_data.download_olist(to)


def download(dataset: str, to: str, **options) -> fetch.Summary:
    """Downloads `dataset` (one of DATASETS) into the folder `to`; see the module docstring."""
    functions = {
        "hrrr": download_hrrr,
        "gravityspy": download_gravityspy,
        "greenearthnet": download_greenearthnet,
        "icecube": download_icecube,
        "olist": download_olist,
    }
    if dataset not in functions:
        raise ValueError(f"unknown dataset {dataset!r}; choose one of {', '.join(DATASETS)}.")
    if not to:
        raise ValueError(f"{dataset}: give the destination folder (--to DIR).")
    if os.path.exists(to) and not os.path.isdir(to):
        raise DownloadError(f"{to} is a file; --to must be a folder.")
    return functions[dataset](to, **options)
