"""IceCube and Olist through the official `kaggle` client, imported only when asked for.

Authentication is the client's: it accepts a token in `KAGGLE_API_TOKEN` or in
`~/.kaggle/access_token` ("Generate New Token" on kaggle.com/settings), and the legacy
`~/.kaggle/kaggle.json` or `KAGGLE_USERNAME` + `KAGGLE_KEY`. jaxlab does not check credentials
itself; when the client refuses, the error is one line naming these methods (and which of them
were found). A competition's rules must also be accepted on its web page.

IceCube: the competition's file list is read page by page (`page_token`, up to 200 files a
page), so every file has its listed size. Each file is downloaded by the client into its own
staging folder `<to>/.kaggle-partial/<name>/` (the client writes straight to its final name and
resumes a file it finds there), checked against the listed size and only then renamed into place:
a file cut by an interrupted transfer stays in staging, is never taken for a complete one, and is
resumed or fetched again by the next run. Client calls answered 429 or 5xx are retried after the
server's Retry-After (else with backoff). Talking to Kaggle is unverified here (tests use a
stand-in client that talks HTTP to a local server); docs/data.md says what was checked.
"""

from __future__ import annotations

import contextlib
import io
import os
import shutil
import time
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
STAGING = ".kaggle-partial"
LIST_PAGE_SIZE = 200  # the most the list call returns a page
AUTH_HELP = (
    "set KAGGLE_API_TOKEN to a token from https://www.kaggle.com/settings (API > Generate New "
    "Token), or save that token in ~/.kaggle/access_token, or use the legacy key: "
    "~/.kaggle/kaggle.json, or KAGGLE_USERNAME and KAGGLE_KEY"
)


def credential_sources() -> list[str]:
    """Which of the client's credential methods are set up (for the error message only: the
    client decides what it accepts)."""
    home = os.path.join(os.path.expanduser("~"), ".kaggle")
    config_dir = os.environ.get("KAGGLE_CONFIG_DIR") or home
    found = []
    if os.environ.get("KAGGLE_API_TOKEN"):
        found.append("KAGGLE_API_TOKEN")
    for folder in dict.fromkeys([config_dir, home]):
        if os.path.isfile(os.path.join(folder, "access_token")):
            found.append(os.path.join(folder, "access_token"))
    if os.path.isfile(os.path.join(config_dir, "kaggle.json")):
        found.append(os.path.join(config_dir, "kaggle.json"))
    if os.environ.get("KAGGLE_USERNAME") and os.environ.get("KAGGLE_KEY"):
        found.append("KAGGLE_USERNAME/KAGGLE_KEY")
    return found


def kaggle_api():
    """An authenticated `KaggleApi`, or one clear DownloadError.

    Importing the client authenticates (and exits when it cannot, after printing its advice);
    its output is captured and shortened into the error line."""
    said = io.StringIO()
    try:
        with contextlib.redirect_stdout(said):
            from kaggle.api.kaggle_api_extended import KaggleApi

            api = KaggleApi()
            api.authenticate()
    except ImportError:
        raise fetch.DownloadError(
            "The Kaggle client is not installed: pip install kaggle (then rerun)."
        ) from None
    except (Exception, SystemExit) as e:
        found = credential_sources()
        if not found:
            raise fetch.DownloadError(f"No Kaggle credentials found: {AUTH_HELP}.") from None
        client = " ".join(said.getvalue().split())[:200] or f"{type(e).__name__}: {e}"
        raise fetch.DownloadError(
            f"Kaggle refused the credentials in {', '.join(found)} ({client}): {AUTH_HELP}."
        ) from None
    return api


def _status(error: BaseException) -> int | None:
    for candidate in (
        getattr(error, "status", None),
        getattr(getattr(error, "response", None), "status_code", None),
    ):
        if isinstance(candidate, int):
            return candidate
    return None


def _header(error: BaseException, name: str) -> str | None:
    for holder in (getattr(error, "response", None), error):
        headers = getattr(holder, "headers", None)
        if headers is not None and hasattr(headers, "get"):
            value = headers.get(name)
            if value:
                return value
    return None


def _call(fn, what: str, page: str, options: fetch.Options):
    """Runs one client call; 429 and 5xx are retried (after Retry-After when given), other
    HTTP answers become one-line errors."""
    for attempt in range(options.retries + 1):
        try:
            return fn()
        except Exception as e:
            status = _status(e)
            if (status == 429 or (status or 0) >= 500) and attempt < options.retries:
                retry_after = fetch.retry_after_s(_header(e, "Retry-After"))
                wait = fetch.wait_s(retry_after, attempt + 1, options)
                report.say(f"Kaggle answered HTTP {status} to {what}; retrying in {wait:.0f} s.")
                time.sleep(wait)
                continue
            if status == 403:
                raise fetch.DownloadError(
                    f"Kaggle refused {what} (HTTP 403): sign in, open {page} and accept the rules "
                    "(Join Competition / I Understand and Accept), then rerun."
                ) from None
            if status == 401:
                raise fetch.DownloadError(
                    f"Kaggle rejected the credentials (HTTP 401): {AUTH_HELP}."
                ) from None
            if status == 404:
                raise fetch.DownloadError(f"Kaggle has no {what} (HTTP 404): {page}.") from None
            if status == 429:
                raise fetch.DownloadError(
                    f"Kaggle kept answering HTTP 429 (too many requests) to {what}; wait and rerun "
                    "(finished files are kept)."
                ) from None
            raise fetch.DownloadError(
                f"Kaggle download of {what} failed: {' '.join(str(e).split())} (rerun to resume)."
            ) from e
    raise AssertionError("unreachable")


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


def listed_sizes(api, competition: str, options: fetch.Options) -> dict[str, int]:
    """{name: bytes} of every file of the competition, read page by page (`next_page_token`)."""
    page = f"https://www.kaggle.com/competitions/{competition}"
    sizes: dict[str, int] = {}
    token, seen = None, set()
    while True:
        response = _call(
            lambda token=token: api.competition_list_files(
                competition, page_token=token, page_size=LIST_PAGE_SIZE
            ),
            f"the file list of {competition}",
            page,
            options,
        )
        for f in getattr(response, "files", None) or []:
            name = getattr(f, "name", None) or getattr(f, "ref", None)
            size = getattr(f, "total_bytes", None)
            size = getattr(f, "totalBytes", None) if size is None else size
            if name and size is not None:
                sizes[name] = int(size)
        token = getattr(response, "next_page_token", None) or getattr(
            response, "nextPageToken", None
        )
        if not token:
            return sizes
        if token in seen:
            raise fetch.DownloadError(
                f"Kaggle's file list of {competition} repeats page token {token!r}; rerun."
            )
        seen.add(token)


def icecube_files(batches) -> list[str]:
    from jaxlab.download.sources import int_list

    ids = int_list(batches, "batches")
    if not ids or min(ids) < 1 or max(ids) > 660:
        raise ValueError(f"icecube: batches must lie in 1..660, got {ids}.")
    return ["sensor_geometry.csv", "train_meta.parquet"] + [f"train/batch_{i}.parquet" for i in ids]


def _staged_file(staging: str, name: str) -> str | None:
    """The file the client left in `staging` for `name`, unzipped when it came zipped (the
    member may sit in a subfolder named like the file's folder)."""
    base = os.path.basename(name)
    zipped = os.path.join(staging, base + ".zip")
    if os.path.isfile(zipped) and not os.path.isfile(os.path.join(staging, base)):
        _unzip(zipped, staging)
    for folder, _, files in os.walk(staging):
        if base in files:
            return os.path.join(folder, base)
    return None


def _fetch_file(api, name: str, size: int, to: str, options: fetch.Options, page: str) -> None:
    """One competition file: client -> staging folder -> size check -> rename into place."""
    staging = os.path.join(to, STAGING, name)
    os.makedirs(staging, exist_ok=True)
    _call(
        lambda: api.competition_download_file(
            ICECUBE, name, path=staging, quiet=not options.progress
        ),
        f"{ICECUBE} file {name}",
        page,
        options,
    )
    got = _staged_file(staging, name)
    if got is None:
        raise fetch.DownloadError(
            f"{staging}: the Kaggle client reported success but wrote no "
            f"{os.path.basename(name)} (found: {sorted(os.listdir(staging))})."
        )
    have = os.path.getsize(got)
    if have != size:
        if have > size:  # not a prefix of the listed file: resuming it cannot help
            os.remove(got)
        raise fetch.DownloadError(
            f"{name}: {have} bytes arrived, Kaggle lists {size}; "
            + ("kept in staging, rerun to resume." if have < size else "deleted, rerun.")
        )
    dest = os.path.join(to, name)
    os.makedirs(os.path.dirname(dest), exist_ok=True)
    os.replace(got, dest)
    shutil.rmtree(staging, ignore_errors=True)


def download_icecube(
    to: str, *, batches="1", api=None, options: fetch.Options | None = None
) -> fetch.Summary:
    """`sensor_geometry.csv`, `train_meta.parquet` and `train/batch_<i>.parquet` for `batches`,
    each verified against the size in the competition's file list."""
    options = options or fetch.Options()
    to = os.path.abspath(to)
    names = icecube_files(batches)
    page = f"https://www.kaggle.com/competitions/{ICECUBE}/rules"
    summary = fetch.Summary("icecube", to)
    api = api or kaggle_api()
    sizes = listed_sizes(api, ICECUBE, options)
    unlisted = [n for n in names if n not in sizes]
    if unlisted:
        raise fetch.DownloadError(
            f"Kaggle's file list of {ICECUBE} ({len(sizes)} files) has no {', '.join(unlisted)}."
        )
    todo = []
    for name in names:
        dest = os.path.join(to, name)
        if os.path.isfile(dest) and os.path.getsize(dest) == sizes[name]:
            summary.skipped.append(name)
            summary.bytes_total += sizes[name]
        else:
            todo.append(name)
    staged = 0
    for name in todo:
        got = os.path.join(to, STAGING, name, os.path.basename(name))
        staged += min(os.path.getsize(got), sizes[name]) if os.path.isfile(got) else 0
    needed = sum(sizes[n] for n in todo) - staged
    free = fetch.free_bytes(to)
    report.say(
        f"icecube: {len(names)} files; {len(todo)} to fetch, {report.human_bytes(needed)} still "
        f"needed, {len(summary.skipped)} already complete; into {to} "
        f"({report.human_bytes(free)} free)."
    )
    if options.check_space and needed > free:
        raise fetch.DownloadError(
            f"{to}: icecube needs {report.human_bytes(needed)} more but only "
            f"{report.human_bytes(free)} is free; free some space or choose another folder."
        )
    for number, name in enumerate(todo, 1):
        report.say(
            f"icecube: file {number} / {len(todo)}: {name} ({report.human_bytes(sizes[name])})"
        )
        _fetch_file(api, name, sizes[name], to, options, page)
        summary.downloaded.append(name)
        summary.bytes_downloaded += sizes[name]
        summary.bytes_total += sizes[name]
    if os.path.isdir(os.path.join(to, STAGING)) and not any(
        files for _, _, files in os.walk(os.path.join(to, STAGING))
    ):
        shutil.rmtree(os.path.join(to, STAGING))
    report.say(str(summary))
    return summary


def download_olist(to: str, *, api=None, options: fetch.Options | None = None) -> fetch.Summary:
    """The nine Olist CSVs: one zip from Kaggle, unpacked in a staging folder, then moved."""
    options = options or fetch.Options()
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
        staging = os.path.join(to, STAGING, "olist")
        os.makedirs(staging, exist_ok=True)
        _call(
            lambda: api.dataset_download_files(
                OLIST, path=staging, unzip=True, quiet=not options.progress
            ),
            f"dataset {OLIST}",
            page,
            options,
        )
        missing = [n for n in OLIST_FILES if not os.path.isfile(os.path.join(staging, n))]
        if missing:
            raise fetch.DownloadError(f"{staging}: the Olist download lacks {missing}.")
        for name in OLIST_FILES:
            if name not in present:
                os.replace(os.path.join(staging, name), os.path.join(to, name))
        shutil.rmtree(os.path.join(to, STAGING), ignore_errors=True)
    for name in OLIST_FILES:
        size = os.path.getsize(os.path.join(to, name))
        (summary.skipped if name in present else summary.downloaded).append(name)
        summary.bytes_total += size
        if name not in present:
            summary.bytes_downloaded += size
    report.say(str(summary))
    return summary
