"""HTTP downloads that survive a flaky network: resume, retry, verify, skip what is complete.

`fetch_all(dataset, remotes, to, options)` brings every `Remote` (a URL, or byte ranges of one,
with the size and checksums the source publishes) to `<to>/<remote.path>`:

1. Files already complete are skipped: present with the published size, and either recorded in
   the folder's manifest (`MANIFEST`, JSON: size, mtime, md5 per file) or matching the published
   checksum when hashed again.
2. The bytes still to fetch are announced and checked against the free disk space before any
   transfer starts.
3. Each file is written to `<path>.part` (`<path>.<variant hash>.part` for a field subset, so a
   part of another field list is never resumed). After an interruption (a dropped connection,
   Ctrl-C, a crash) the next attempt asks only for the missing bytes (HTTP `Range`), whether the
   retry happens within this run or in a later one. 5xx answers, 429 and connection errors are
   retried with exponential backoff, or after the server's `Retry-After` when it sends one; a 404
   is one error naming the URL (`NotFoundError`), or, where the source has known gaps
   (`skip_not_found`), a file listed as missing in the summary.
4. The finished `.part` is checked (size, md5 / sha256 where published, a structural check for
   GRIB2 subsets), then renamed into place and recorded in the manifest. A checksum mismatch
   deletes the `.part` (its bytes are wrong, resuming it cannot help) and raises `ChecksumError`
   once the other files are done; when most files fail their checksum the run stops early (the
   published sums are then likely not sums of the content, e.g. S3 ETags that are not md5).
5. `options.workers` files are fetched at a time (a bounded thread pool). A progress bar (tqdm
   when installed; else a log line every few seconds) shows bytes, bytes/s and the ETA, and a
   summary names the files, bytes, folder and any missing files.

Only the standard library is used (`urllib`), so downloads need no extra dependency.
"""

from __future__ import annotations

import dataclasses
import hashlib
import http.client
import json
import os
import shutil
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from concurrent import futures
from email.utils import parsedate_to_datetime

from jaxlab.download.report import Progress, human_bytes, say

MANIFEST = ".jaxlab-download.json"
USER_AGENT = "jaxlab-download/0.1"


class DownloadError(RuntimeError):
    """A download failed; the message is one line naming the URL or file and what to do."""


class ChecksumError(DownloadError):
    """A downloaded file's checksum differs from the one its source publishes."""


class NotFoundError(DownloadError):
    """HTTP 404: the source has no such file (a gap in an archive, a wrong name or date)."""


class MissingFilesError(DownloadError):
    """The run finished but more requested files are missing than `allow_missing` accepts."""

    def __init__(self, message: str, summary: Summary):
        super().__init__(message)
        self.summary = summary


class _Transient(Exception):
    """A failure worth retrying: 5xx, 429, a dropped or refused connection, a timeout.

    retry_after: the seconds the server asked us to wait (`Retry-After`), None when it did not."""

    def __init__(self, message: str, retry_after: float | None = None):
        super().__init__(message)
        self.retry_after = retry_after


class _Stopped(Exception):
    """The run is stopping (another file failed, Ctrl-C): the `.part` is kept for the next run."""


class _RangeNotSatisfiable(Exception):
    """HTTP 416: the range starts at or past the end (a `.part` that is already whole)."""


@dataclasses.dataclass(frozen=True)
class Remote:
    """One file to fetch.

    path: where it goes, relative to the destination folder ('/'-separated).
    url: where it comes from.
    size: its size in bytes when the source says (checked); None when unknown.
    md5, sha256: hex digests when the source publishes them (checked).
    ranges: inclusive byte ranges (start, end) of `url` whose concatenation is the file (an
      HRRR field subset); () means the whole of `url`.
    kind: "grib2" adds a structural check (every range starts with GRIB, the file ends with 7777).
    variant: what of `url` the file holds when that can change between runs (the HRRR field
      list); recorded in the manifest, a file of another variant is fetched again.
    """

    path: str
    url: str
    size: int | None = None
    md5: str | None = None
    sha256: str | None = None
    ranges: tuple[tuple[int, int], ...] = ()
    kind: str = ""
    variant: str = ""


@dataclasses.dataclass(frozen=True)
class Options:
    """How to fetch. `backoff_s * 2**attempt` (at most `max_backoff_s`) between retries, or the
    server's `Retry-After` (at most `max_retry_after_s`); `workers` files at a time."""

    retries: int = 5
    backoff_s: float = 1.0
    max_backoff_s: float = 60.0
    max_retry_after_s: float = 900.0
    timeout_s: float = 60.0
    progress: bool = True
    workers: int = 4
    check_space: bool = True
    chunk_bytes: int = 1 << 20


@dataclasses.dataclass
class Summary:
    """What a download did: printed at the end, returned to the caller."""

    dataset: str
    directory: str
    downloaded: list[str] = dataclasses.field(default_factory=list)
    skipped: list[str] = dataclasses.field(default_factory=list)
    missing: list[tuple[str, str]] = dataclasses.field(default_factory=list)  # (path, why)
    bytes_downloaded: int = 0
    bytes_total: int = 0

    def __str__(self) -> str:
        files = len(self.downloaded) + len(self.skipped)
        text = (
            f"{self.dataset}: {files} files, {human_bytes(self.bytes_total)} in {self.directory} "
            f"({len(self.downloaded)} downloaded, {human_bytes(self.bytes_downloaded)} "
            f"transferred; {len(self.skipped)} already complete)"
        )
        if self.missing:
            text += f"; {len(self.missing)} missing at the source (listed above)"
        return text + "."


# --- HTTP ------------------------------------------------------------------------------------


def safe_url(url: str) -> str:
    """`url` with characters a request line cannot hold (spaces, non-ASCII) percent-encoded;
    existing %XX escapes and the URL's delimiters are kept, so a quoted URL is unchanged."""
    return urllib.parse.quote(url, safe=":/?#[]@!$&'()*+,;=%~")


def retry_after_s(value: str | None) -> float | None:
    """`Retry-After` as seconds: delta-seconds or an HTTP date (RFC 9110); None if absent/bad."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def wait_s(retry_after: float | None, failures: int, options: Options) -> float:
    """The pause before retry number `failures` (1-based): the server's Retry-After when it
    sent one, else exponential backoff."""
    if retry_after is not None:
        return min(options.max_retry_after_s, retry_after)
    return min(options.max_backoff_s, options.backoff_s * 2 ** max(failures - 1, 0))


def _pause(seconds: float, stop: threading.Event | None = None) -> None:
    """Waits `seconds` before a retry; a run that is stopping (`stop` set) ends the wait."""
    if stop is None:
        time.sleep(seconds)
    elif stop.wait(seconds):
        raise _Stopped("stopping")


def open_url(
    url: str,
    options: Options,
    *,
    start: int | None = None,
    end: int | None = None,
    method: str = "GET",
):
    """urlopen with a Range header when `start` is given; maps failures to clear errors."""
    headers = {"User-Agent": USER_AGENT}
    if start is not None:
        headers["Range"] = f"bytes={start}-{'' if end is None else end}"
    request = urllib.request.Request(safe_url(url), headers=headers, method=method)
    try:
        return urllib.request.urlopen(request, timeout=options.timeout_s)
    except urllib.error.HTTPError as e:
        if e.code >= 500 or e.code == 429:
            wait = retry_after_s(e.headers.get("Retry-After") if e.headers else None)
            raise _Transient(f"HTTP {e.code} {e.reason}", wait) from e
        if e.code == 416:
            raise _RangeNotSatisfiable(url) from e
        if e.code == 404:
            raise NotFoundError(
                f"{url}: not found (HTTP 404); check the name, date or base URL."
            ) from e
        raise DownloadError(f"{url}: HTTP {e.code} {e.reason}.") from e
    except (urllib.error.URLError, OSError, http.client.HTTPException) as e:
        raise _Transient(f"{type(e).__name__}: {getattr(e, 'reason', e)}") from e


def with_retries(fn, url: str, options: Options):
    """fn() retried on transient failures with exponential backoff; DownloadError when spent."""
    for attempt in range(options.retries + 1):
        try:
            return fn()
        except _Transient as e:
            if attempt == options.retries:
                raise DownloadError(
                    f"{url}: {e} (gave up after {options.retries + 1} attempts; rerun to resume)."
                ) from e
            _pause(wait_s(e.retry_after, attempt + 1, options))
    raise AssertionError("unreachable")


def get_bytes(url: str, options: Options) -> bytes:
    """A small document (an index, a JSON record, a listing), retried like any transfer."""

    def attempt():
        try:
            with open_url(url, options) as response:
                return response.read()
        except (OSError, http.client.HTTPException) as e:
            raise _Transient(f"{type(e).__name__}: {e}") from e

    return with_retries(attempt, url, options)


def content_length(url: str, options: Options) -> int:
    """The size of `url` from a HEAD request."""

    def attempt():
        with open_url(url, options, method="HEAD") as response:
            value = response.headers.get("Content-Length")
        if value is None:
            raise DownloadError(f"{url}: the server gives no Content-Length.")
        return int(value)

    return with_retries(attempt, url, options)


# --- manifest, checksums, space --------------------------------------------------------------


def load_manifest(directory: str) -> dict:
    path = os.path.join(directory, MANIFEST)
    if not os.path.exists(path):
        return {}
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return {}  # a damaged manifest only costs re-hashing


def save_manifest(directory: str, manifest: dict) -> None:
    path = os.path.join(directory, MANIFEST)
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "w") as f:
        json.dump(manifest, f, indent=1, sort_keys=True)
    os.replace(tmp, path)


def digests(path: str, chunk: int = 1 << 22) -> dict[str, str]:
    md5, sha256 = hashlib.md5(), hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            md5.update(block)
            sha256.update(block)
    return {"md5": md5.hexdigest(), "sha256": sha256.hexdigest()}


def _mismatch(remote: Remote, got: dict[str, str]) -> str | None:
    for name in ("md5", "sha256"):
        want = getattr(remote, name)
        if want and want.lower() != got[name]:
            return f"{name} {got[name]}, expected {want.lower()}"
    return None


def is_recorded(directory: str, relpath: str, manifest: dict | None = None) -> bool:
    """Whether the manifest records `relpath` as complete and the file is unchanged since."""
    manifest = load_manifest(directory) if manifest is None else manifest
    entry = manifest.get(relpath)
    dest = os.path.join(directory, relpath)
    if not entry or not os.path.isfile(dest):
        return False
    st = os.stat(dest)
    return entry.get("size") == st.st_size and entry.get("mtime_ns") == st.st_mtime_ns


def _record(manifest: dict, directory: str, remote: Remote, sums: dict[str, str]) -> None:
    st = os.stat(os.path.join(directory, remote.path))
    manifest[remote.path] = {
        "size": st.st_size,
        "mtime_ns": st.st_mtime_ns,
        "md5": sums["md5"],
        "sha256": sums["sha256"],
        "url": remote.url,
        "variant": remote.variant,
    }


def _complete(remote: Remote, directory: str, manifest: dict) -> bool:
    """Idempotence: the file is present and matches what the source publishes."""
    dest = os.path.join(directory, remote.path)
    if not os.path.isfile(dest):
        return False
    if remote.size is not None and os.path.getsize(dest) != remote.size:
        return False
    recorded = is_recorded(directory, remote.path, manifest)
    if remote.variant and (not recorded or manifest[remote.path].get("variant") != remote.variant):
        return False  # another field list (or not ours): its bytes are not what is asked for
    if recorded:
        entry = manifest[remote.path]
        return all(
            not getattr(remote, k) or getattr(remote, k).lower() == entry[k]
            for k in ("md5", "sha256")
        )
    if remote.md5 or remote.sha256:
        sums = digests(dest)
        if _mismatch(remote, sums):
            say(f"{dest}: present but its checksum differs from the source's; fetching again.")
            return False
        _record(manifest, directory, remote, sums)
        return True
    return remote.size is not None  # size-checked only: the source publishes no checksum


def free_bytes(directory: str) -> int:
    """Free space on the file system that holds `directory` (or its nearest existing parent)."""
    probe = os.path.abspath(directory)
    while not os.path.exists(probe):
        probe = os.path.dirname(probe)
    return shutil.disk_usage(probe).free


def part_path(directory: str, remote: Remote) -> str:
    """Where `remote` is written until verified; a variant gets its own part file."""
    dest = os.path.join(directory, remote.path)
    if not remote.variant:
        return dest + ".part"
    return f"{dest}.{hashlib.sha256(remote.variant.encode()).hexdigest()[:8]}.part"


def _part_size(path: str) -> int:
    return os.path.getsize(path) if os.path.exists(path) else 0


# --- one file --------------------------------------------------------------------------------


def _pieces(remote: Remote) -> tuple[tuple[int, int | None], ...]:
    if remote.ranges:
        return remote.ranges
    return ((0, None if remote.size is None else remote.size - 1),)


def _fill(
    remote: Remote, part: str, options: Options, bar: Progress, stop: threading.Event | None = None
) -> None:
    """Appends to `part` the bytes it still lacks. Raises _Transient on a network failure; what
    arrived before it stays in `part`, so the next call resumes there."""
    have, pos = _part_size(part), 0
    for start, end in _pieces(remote):
        length = None if end is None else end - start + 1
        if length is not None and have >= pos + length:
            pos += length
            continue
        offset = start + (have - pos)
        ask_range = bool(remote.ranges) or offset > 0
        try:
            response = open_url(
                remote.url,
                options,
                start=offset if ask_range else None,
                end=end if ask_range else None,
            )
        except _RangeNotSatisfiable:
            if length is None and not remote.ranges:
                return  # unknown size and the server has nothing past what we hold
            raise DownloadError(f"{remote.url}: the server rejects range {offset}-{end}.") from None
        with response, open(part, "ab") as f:
            if ask_range and response.status != 206:
                if remote.ranges:
                    raise DownloadError(
                        f"{remote.url}: the server ignored the byte-range request (HTTP "
                        f"{response.status}); cannot fetch a field subset from it."
                    )
                f.truncate(0)  # whole file sent again: start over
                bar.update(-have)
            try:
                while chunk := response.read(options.chunk_bytes):
                    f.write(chunk)
                    if stop is not None and stop.is_set():
                        raise _Stopped(remote.path)
                    bar.update(len(chunk))
            except (OSError, http.client.HTTPException) as e:
                raise _Transient(f"connection lost mid-file ({type(e).__name__}: {e})") from e
            if getattr(response, "length", None):  # Content-Length promised more than arrived
                raise _Transient(f"connection closed with {response.length} bytes still due")
        have = _part_size(part)
        if length is not None and have < pos + length:
            raise _Transient(f"connection closed after {have} of {pos + length} bytes")
        pos = have


def _check_grib2(path: str, remote: Remote) -> str | None:
    with open(path, "rb") as f:
        offset = 0
        for start, end in remote.ranges:
            f.seek(offset)
            if f.read(4) != b"GRIB":
                return f"byte {offset} (source range {start}-{end}) does not start a GRIB message"
            offset += end - start + 1
        f.seek(-4, os.SEEK_END)
        if f.read(4) != b"7777":
            return "the last GRIB message is not terminated by 7777"
    return None


def _verify(remote: Remote, part: str) -> dict[str, str]:
    size = _part_size(part)
    if remote.size is not None and size != remote.size:
        raise DownloadError(f"{remote.url}: got {size} bytes, expected {remote.size}; rerun.")
    sums = digests(part)
    problem = _mismatch(remote, sums)
    if problem is None and remote.kind == "grib2":
        problem = _check_grib2(part, remote)
    if problem:
        os.remove(part)
        raise ChecksumError(
            f"{remote.path}: corrupt download from {remote.url}: {problem}; the partial file "
            "was deleted, rerun to fetch it again."
        )
    return sums


def fetch_one(
    remote: Remote,
    directory: str,
    options: Options,
    bar: Progress,
    stop: threading.Event | None = None,
) -> dict[str, str]:
    """Downloads one remote into place (resuming a `.part`); returns its digests. Setting
    `stop` ends the transfer at the next chunk (raising _Stopped), keeping the `.part`."""
    dest = os.path.join(directory, remote.path)
    os.makedirs(os.path.dirname(dest) or ".", exist_ok=True)
    part = part_path(directory, remote)
    if remote.size is not None and _part_size(part) > remote.size:
        os.remove(part)  # longer than the source: not a prefix of it
    failures = 0
    while True:
        before = _part_size(part)
        try:
            _fill(remote, part, options, bar, stop)
            break
        except _Transient as e:
            failures = 0 if _part_size(part) > before else failures + 1  # progress resets
            if failures > options.retries:
                raise DownloadError(
                    f"{remote.url}: {e} (gave up after {options.retries + 1} attempts without "
                    f"progress; {_part_size(part)} bytes kept in {part}, rerun to resume)."
                ) from e
            _pause(wait_s(e.retry_after, max(failures, 1), options), stop)
    sums = _verify(remote, part)
    os.replace(part, dest)
    return sums


# --- many files ------------------------------------------------------------------------------


def _announce(dataset, remotes, todo, to, summary) -> tuple[int, int]:
    sizes = [r.size for r in todo]
    known = sum(s for s in sizes if s is not None)
    resumed = sum(min(_part_size(part_path(to, r)), r.size or 0) for r in todo)
    needed, unknown = known - resumed, sum(s is None for s in sizes)
    say(
        f"{dataset}: {len(remotes)} files; {len(todo)} to fetch, {human_bytes(needed)} still needed"
        + (f" (+{unknown} of unknown size)" if unknown else "")
        + f", {len(summary.skipped)} already complete; into {to} "
        f"({human_bytes(free_bytes(to))} free)."
    )
    return needed, unknown


def _mostly_bad_sums(bad: int, good: int) -> bool:
    """Whether checksum failures are the rule rather than the exception: at least 3, and more
    than the files that passed. Then the published sums are likely not sums of the content."""
    return bad >= 3 and bad > good


def fetch_all(
    dataset: str,
    remotes: list[Remote],
    to: str,
    options: Options,
    *,
    missing: list[tuple[str, str]] = (),
    skip_not_found: bool = False,
    sums_hint: str = "rerun with the source's option to not use its checksums",
) -> Summary:
    """Brings every remote to `<to>/<remote.path>`: announce, check space, fetch, summarise.

    `missing`: (path, why) of requested files the source lacks, found while listing (listed in
    the summary). `skip_not_found`: a 404 on a file adds it to those instead of stopping the run
    (sources with known gaps, HRRR). `sums_hint`: what to do when most checksums fail. Up to
    `options.workers` files are fetched at a time; a
    failing file stops the run: no new transfers, those in flight end at their next chunk
    and keep their `.part` for the next run; then its error is raised.
    """
    to = os.path.abspath(to)
    os.makedirs(to, exist_ok=True)
    manifest = load_manifest(to)
    summary = Summary(dataset, to, missing=list(missing))
    todo = []
    for remote in remotes:
        if _complete(remote, to, manifest):
            summary.skipped.append(remote.path)
            summary.bytes_total += os.path.getsize(os.path.join(to, remote.path))
        else:
            todo.append(remote)
    save_manifest(to, manifest)
    needed, unknown = _announce(dataset, remotes, todo, to, summary)
    free = free_bytes(to)
    if options.check_space and needed > free:
        raise DownloadError(
            f"{to}: {dataset} needs {human_bytes(needed)} more but only {human_bytes(free)} is "
            "free; free some space or choose another folder."
        )
    bar = Progress(needed if not unknown else None, dataset, options.progress and bool(todo))
    bad_sums: list[ChecksumError] = []
    error: BaseException | None = None
    stop = threading.Event()
    pool = futures.ThreadPoolExecutor(max(1, options.workers))
    try:
        pending = {pool.submit(fetch_one, r, to, options, bar, stop): r for r in todo}
        for done in futures.as_completed(pending):
            remote = pending[done]
            try:
                sums = done.result()
            except ChecksumError as e:
                bad_sums.append(e)
                if _mostly_bad_sums(len(bad_sums), len(summary.downloaded)):
                    error = error or e
            except NotFoundError as e:
                if not skip_not_found:
                    error = error or e
                summary.missing.append((remote.path, "not found (HTTP 404)"))
            except _Stopped:
                pass  # its .part stays for the next run
            except BaseException as e:  # noqa: BLE001 - re-raised below, after the others
                error = error or e
            else:
                _record(manifest, to, remote, sums)
                save_manifest(to, manifest)
                summary.downloaded.append(remote.path)
                summary.bytes_total += os.path.getsize(os.path.join(to, remote.path))
            if error is not None:
                stop.set()  # transfers in flight end at their next chunk, keeping .part
                for future in pending:
                    future.cancel()  # those not started
    except BaseException:  # Ctrl-C: the workers stop too; what is finished stays recorded
        stop.set()
        raise
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
        save_manifest(to, manifest)
        bar.close()
        summary.bytes_downloaded = max(bar.done, 0)
    if bad_sums and (error is None or isinstance(error, ChecksumError)):
        first = bad_sums[0]
        if _mostly_bad_sums(len(bad_sums), len(summary.downloaded)):
            raise ChecksumError(
                f"{dataset}: {len(bad_sums)} files failed their checksum and only "
                f"{len(summary.downloaded)} passed, so the published sums are likely not sums of "
                f"the content (first: {first}); stopped: {sums_hint}."
            ) from first
        more = f" ({len(bad_sums) - 1} more files too)" if len(bad_sums) > 1 else ""
        raise ChecksumError(f"{first}{more}") from first
    if error is not None:
        raise error
    list_missing(summary)
    say(str(summary))
    return summary


def list_missing(summary: Summary, shown: int = 20) -> None:
    """Prints the files the source lacks (the first `shown`) and writes them all to
    `<dir>/.jaxlab-missing-<dataset>.txt`, one `path<TAB>why` a line."""
    path = os.path.join(summary.directory, f".jaxlab-missing-{summary.dataset}.txt")
    if not summary.missing:
        if os.path.exists(path):
            os.remove(path)
        return
    summary.missing.sort()
    with open(path, "w") as f:
        f.writelines(f"{p}\t{why}\n" for p, why in summary.missing)
    say(f"{summary.dataset}: {len(summary.missing)} requested files are missing at the source:")
    for p, why in summary.missing[:shown]:
        say(f"  {p}: {why}")
    if len(summary.missing) > shown:
        say(f"  ... {len(summary.missing) - shown} more")
    say(f"  (all listed in {path})")


def allowed_missing(allow, requested: int) -> int:
    """How many of `requested` files may be missing: `allow` is False/0 (none), True/"all",
    a count (5) or a share ("2%", 0.02)."""
    if isinstance(allow, bool):
        return requested if allow else 0
    text = str(allow).strip().lower()
    if text in ("all", "true", "yes"):
        return requested
    if text in ("", "none", "false", "no"):
        return 0
    try:
        if text.endswith("%"):
            return int(requested * float(text[:-1]) / 100)
        value = float(text)
    except ValueError:
        raise ValueError(
            f"allow_missing={allow!r}: expected a count (5), a share (2% or 0.02), all or no."
        ) from None
    if value < 0:
        raise ValueError(f"allow_missing={allow!r} is negative.")
    return int(requested * value) if 0 < value < 1 else int(value)


def check_missing(summary: Summary, allow, requested: int) -> Summary:
    """Raises MissingFilesError when more than `allow_missing` of the requested files are
    missing (after the rest was downloaded); returns the summary otherwise."""
    limit = allowed_missing(allow, requested)
    if len(summary.missing) > limit:
        raise MissingFilesError(
            f"{summary.dataset}: {len(summary.missing)} of {requested} requested files are missing "
            f"at the source (allowed: {limit}); the rest is in {summary.directory}, the gaps are "
            f"listed in {summary.directory}/.jaxlab-missing-{summary.dataset}.txt; rerun with "
            "allow_missing=N, =2% or =all to accept gaps.",
            summary,
        )
    return summary
