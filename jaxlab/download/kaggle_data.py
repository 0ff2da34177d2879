"""IceCube and Olist through the official `kaggle` client, imported only when asked for.

Kaggle requires an account, an API token (`~/.kaggle/kaggle.json`, or `KAGGLE_USERNAME` and
`KAGGLE_KEY`), and for a competition that the rules were accepted on its web page. Each missing
piece is one error line saying what to do. Transfers, their resumption and progress bars are the
client's; this module picks the files, skips those already present with the listed size, unpacks
what the client delivers zipped, and prints the same announcement and summary as the HTTP sources.
Talking to Kaggle is unverified here (no internet where this was written; tests use a stand-in
client).
"""

from __future__ import annotations

import os
import zipfile

from jaxlab.download import fetch, report

ICECUBE = "icecube-neutrinos-in-deep-ice"
OLIST = "olistbr/brazilian-ecommerce"
OLIST_FILES = (
    "olist_customers_dataset.csv",
    "olist_geolocation_dataset.csv",
    "olist_order_items_dataset.csv",
    "olist_order_payments_dataset.csv",
    "olist_order_reviews_dataset.csv",
    "olist_orders_dataset.csv",
    "olist_products_dataset.csv",
    "olist_sellers_dataset.csv",
    "product_category_name_translation.csv",
)
TOKEN_HELP = (
    "create an API token at https://www.kaggle.com/settings (Account > API > Create New Token) "
    "and save it as ~/.kaggle/kaggle.json (chmod 600), or set KAGGLE_USERNAME and KAGGLE_KEY"
)


def _has_credentials() -> bool:
    if os.environ.get("KAGGLE_USERNAME") and os.environ.get("KAGGLE_KEY"):
        return True
    config_dir = os.environ.get("KAGGLE_CONFIG_DIR") or os.path.join(
        os.path.expanduser("~"), ".kaggle"
    )
    return os.path.isfile(os.path.join(config_dir, "kaggle.json"))


def kaggle_api():
    """An authenticated `KaggleApi`, or one clear DownloadError."""
    if not _has_credentials():
        raise fetch.DownloadError(f"Kaggle credentials not found: {TOKEN_HELP}.")
    try:
        # Importing the package authenticates (and, in some versions, exits on failure).
        from kaggle.api.kaggle_api_extended import KaggleApi
    except ImportError:
        raise fetch.DownloadError(
            "The Kaggle client is not installed: pip install kaggle (then rerun)."
        ) from None
    except (Exception, SystemExit) as e:
        raise fetch.DownloadError(f"Kaggle authentication failed ({e}): {TOKEN_HELP}.") from None
    api = KaggleApi()
    try:
        api.authenticate()
    except (Exception, SystemExit) as e:
        raise fetch.DownloadError(f"Kaggle authentication failed ({e}): {TOKEN_HELP}.") from None
    return api


def _status(error: BaseException) -> int | None:
    for candidate in (
        getattr(error, "status", None),
        getattr(getattr(error, "response", None), "status_code", None),
    ):
        if isinstance(candidate, int):
            return candidate
    return None


def _call(fn, what: str, page: str):
    """Runs one client call; maps Kaggle's HTTP answers to one-line errors."""
    try:
        return fn()
    except Exception as e:
        status = _status(e)
        if status == 403:
            raise fetch.DownloadError(
                f"Kaggle refused {what} (HTTP 403): sign in, open {page} and accept the rules "
                "(Join Competition / I Understand and Accept), then rerun."
            ) from None
        if status == 401:
            raise fetch.DownloadError(
                f"Kaggle rejected the API token (HTTP 401): {TOKEN_HELP}."
            ) from None
        if status == 404:
            raise fetch.DownloadError(f"Kaggle has no {what} (HTTP 404): {page}.") from None
        raise fetch.DownloadError(f"Kaggle download of {what} failed: {e}") from e


def _unzip(path: str, directory: str) -> None:
    with zipfile.ZipFile(path) as archive:
        for member in archive.namelist():
            target = os.path.abspath(os.path.join(directory, member))
            if not target.startswith(os.path.abspath(directory) + os.sep):
                raise fetch.DownloadError(
                    f"{path}: member {member!r} would land outside {directory}."
                )
        archive.extractall(directory)
    os.remove(path)


def _listed_sizes(api, competition: str) -> dict[str, int]:
    """{name: bytes} from the competition's file list, {} when the client cannot say."""
    try:
        listing = api.competition_list_files(competition)
    except Exception:
        return {}
    files = getattr(listing, "files", listing) or []
    sizes = {}
    for f in files:
        name = getattr(f, "name", None) or getattr(f, "ref", None)
        size = getattr(f, "total_bytes", None) or getattr(f, "totalBytes", None)
        if name and isinstance(size, int):
            sizes[name] = size
    return sizes


def icecube_files(batches) -> list[str]:
    from jaxlab.download.sources import int_list

    ids = int_list(batches, "batches")
    if not ids or min(ids) < 1 or max(ids) > 660:
        raise ValueError(f"icecube: batches must lie in 1..660, got {ids}.")
    return ["sensor_geometry.csv", "train_meta.parquet"] + [f"train/batch_{i}.parquet" for i in ids]


def download_icecube(to: str, *, batches="1", api=None) -> fetch.Summary:
    """`sensor_geometry.csv`, `train_meta.parquet` and `train/batch_<i>.parquet` for `batches`."""
    to = os.path.abspath(to)
    names = icecube_files(batches)
    page = f"https://www.kaggle.com/competitions/{ICECUBE}/rules"
    summary = fetch.Summary("icecube", to)
    api = api or kaggle_api()
    sizes = _listed_sizes(api, ICECUBE)
    todo = []
    for name in names:
        dest = os.path.join(to, name)
        if os.path.isfile(dest) and (name not in sizes or os.path.getsize(dest) == sizes[name]):
            summary.skipped.append(name)
            summary.bytes_total += os.path.getsize(dest)
        else:
            todo.append(name)
    needed = sum(sizes.get(n, 0) for n in todo)
    unknown = sum(n not in sizes for n in todo)
    report.say(
        f"icecube: {len(names)} files; {len(todo)} to fetch, {report.human_bytes(needed)} needed"
        + (f" (+{unknown} of unknown size)" if unknown else "")
        + f"; into {to} ({report.human_bytes(fetch.free_bytes(to))} free)."
    )
    if needed > fetch.free_bytes(to):
        raise fetch.DownloadError(
            f"{to}: icecube needs {report.human_bytes(needed)}; not enough free."
        )
    for name in todo:
        directory = os.path.dirname(os.path.join(to, name))
        os.makedirs(directory, exist_ok=True)
        _call(
            lambda name=name, directory=directory: api.competition_download_file(
                ICECUBE, name, path=directory, quiet=False
            ),
            f"{ICECUBE} file {name}",
            page,
        )
        zipped = os.path.join(directory, os.path.basename(name) + ".zip")
        if os.path.exists(zipped):
            _unzip(zipped, directory)
        dest = os.path.join(to, name)
        if not os.path.isfile(dest):
            raise fetch.DownloadError(
                f"{dest}: the Kaggle client reported success but wrote nothing."
            )
        if name in sizes and os.path.getsize(dest) != sizes[name]:
            raise fetch.DownloadError(
                f"{dest}: {os.path.getsize(dest)} bytes, Kaggle lists {sizes[name]}; rerun."
            )
        summary.downloaded.append(name)
        summary.bytes_downloaded += os.path.getsize(dest)
        summary.bytes_total += os.path.getsize(dest)
    report.say(str(summary))
    return summary


def download_olist(to: str, *, api=None) -> fetch.Summary:
    """The nine Olist CSVs (one zip from Kaggle, unpacked into `to`)."""
    to = os.path.abspath(to)
    page = f"https://www.kaggle.com/datasets/{OLIST}"
    summary = fetch.Summary("olist", to)
    present = [n for n in OLIST_FILES if os.path.isfile(os.path.join(to, n))]
    if len(present) < len(OLIST_FILES):
        api = api or kaggle_api()
        report.say(
            f"olist: {len(OLIST_FILES) - len(present)} CSVs to fetch (about 45 MB zipped) "
            f"into {to} ({report.human_bytes(fetch.free_bytes(to))} free)."
        )
        os.makedirs(to, exist_ok=True)
        _call(
            lambda: api.dataset_download_files(OLIST, path=to, unzip=True, quiet=False),
            f"dataset {OLIST}",
            page,
        )
        missing = [n for n in OLIST_FILES if not os.path.isfile(os.path.join(to, n))]
        if missing:
            raise fetch.DownloadError(f"{to}: the Olist download lacks {missing}.")
    for name in OLIST_FILES:
        size = os.path.getsize(os.path.join(to, name))
        (summary.skipped if name in present else summary.downloaded).append(name)
        summary.bytes_total += size
        if name not in present:
            summary.bytes_downloaded += size
    report.say(str(summary))
    return summary
