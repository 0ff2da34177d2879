"""`jaxlab.download` against a local HTTP server on 127.0.0.1 with fault injection.

The server's answers copy the shapes the real services document: Zenodo record JSON (current
InvenioRDM keys and the legacy/deposit keys), S3 ListObjectsV2 XML (two keys a page, so
continuation tokens are followed; single-part md5 ETags and multipart "<hex>-<n>" ETags), HRRR
files with `.idx` indexes (several CAPE/CIN levels, a missing hour), and Kaggle's paged file list
(`files`, `nextPageToken`) and file downloads, served to a stand-in client that calls the server
the way the `kaggle` client does (same method names and arguments, writes straight to the final
name, resumes a partial file it finds). Per-path scripted faults: "503" answers 503, "429:N"
answers 429 with `Retry-After: N`, "drop:N" sends the headers of the whole answer and then only N
bytes before closing the connection.
"""

import hashlib
import http.server
import io
import json
import os
import re
import sys
import tarfile
import threading
import time
import types
import urllib.error
import urllib.parse
import urllib.request
import zipfile
from xml.sax.saxutils import escape

import numpy as np
import pytest

from jaxlab import download
from jaxlab.download import fetch, kaggle_data, report

FAST = dict(progress=False, backoff_s=0.001, retries=3)


class FakeServer:
    def __init__(self):
        self.files: dict[str, bytes] = {}  # URL path -> body
        self.buckets: dict[str, dict[str, bytes]] = {}  # bucket path -> {key: body}
        self.faults: dict[str, list[str]] = {}  # URL path -> actions, one per request
        self.requests: list[tuple[str, str, str | None]] = []  # (method, path, Range)
        self.etags: dict[str, str] = {}  # S3 key -> ETag to list instead of the md5
        self.kaggle_lists: dict[str, list[tuple[str, int]]] = {}  # list URL path -> (name, size)
        self.kaggle_page_max = 200  # the list call's largest page
        self.kaggle_zipped: set[str] = set()  # competition files the client receives zipped
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_HEAD(self):
                self.answer(head=True)

            def do_GET(self):
                self.answer(head=False)

            def answer(self, head):
                url = urllib.parse.urlsplit(self.path)
                path = urllib.parse.unquote(url.path)
                server.requests.append((self.command, path, self.headers.get("Range")))
                action = server.faults.get(path, [None]).pop(0) if server.faults.get(path) else None
                if action == "503":
                    return self.send_error(503, "Slow Down")
                if action == "403":
                    return self.send_error(403, "Forbidden")
                if action and action.startswith("wait:"):  # a slow answer, then the usual one
                    time.sleep(float(action[5:]))
                if action and action.startswith("429:"):
                    self.send_response(429, "Too Many Requests")
                    self.send_header("Retry-After", action[4:])
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return None
                query = dict(urllib.parse.parse_qsl(url.query))
                if query.get("list-type") == "2" and path in server.buckets:
                    return self.send_body(server.listing(path, query), "application/xml", head)
                if path in server.kaggle_lists:
                    return self.send_body(server.kaggle_page(path, query), "application/json", head)
                body = server.files.get(path)
                if body is None:
                    return self.send_error(404, "Not Found")
                status, start, end = 200, 0, len(body) - 1
                if self.headers.get("Range"):
                    first, _, last = self.headers["Range"].removeprefix("bytes=").partition("-")
                    start, end = int(first), int(last) if last else len(body) - 1
                    if start >= len(body):
                        return self.send_error(416, "Range Not Satisfiable")
                    status = 206
                self.send_response(status)
                self.send_header("Content-Length", str(end - start + 1))
                if status == 206:
                    self.send_header("Content-Range", f"bytes {start}-{end}/{len(body)}")
                self.end_headers()
                if head:
                    return
                chunk = body[start : end + 1]
                if action and action.startswith("drop:"):
                    chunk = chunk[: int(action[5:])]
                    self.close_connection = True
                if action == "slow":  # 1 kB every 20 ms: a long transfer
                    try:
                        for i in range(0, len(chunk), 1000):
                            self.wfile.write(chunk[i : i + 1000])
                            self.wfile.flush()
                            time.sleep(0.02)
                    except (BrokenPipeError, ConnectionResetError):
                        self.close_connection = True  # the client stopped reading
                    return None
                self.wfile.write(chunk)

            def send_body(self, data, kind, head):
                self.send_response(200)
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if not head:
                    self.wfile.write(data)

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(
            target=self.httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
        )

    def listing(self, bucket, query):
        keys = sorted(k for k in self.buckets[bucket] if k.startswith(query.get("prefix", "")))
        start = int(query.get("continuation-token", 0))
        page, rest = keys[start : start + 2], keys[start + 2 :]
        items = "".join(
            f"<Contents><Key>{escape(k)}</Key><LastModified>2023-05-01T10:00:00.000Z"
            f"</LastModified><Size>{len(self.buckets[bucket][k])}</Size><ETag>&quot;"
            f"{self.etags.get(k) or hashlib.md5(self.buckets[bucket][k]).hexdigest()}&quot;</ETag>"
            "<StorageClass>STANDARD</StorageClass></Contents>"
            for k in page
        )
        token = f"<NextContinuationToken>{start + 2}</NextContinuationToken>" if rest else ""
        return (
            '<?xml version="1.0"?><ListBucketResult xmlns="http://s3.amazonaws.com/doc/2006-03-01/">'
            f"<IsTruncated>{'true' if rest else 'false'}</IsTruncated>{items}{token}"
            "</ListBucketResult>"
        ).encode()

    def kaggle_page(self, path, query):
        """One page of a competition's file list, as the list call answers it (JSON)."""
        files = self.kaggle_lists[path]
        start = int(query.get("pageToken") or 0)
        size = min(int(query.get("pageSize", 20)), self.kaggle_page_max)
        page = files[start : start + size]
        token = str(start + size) if start + size < len(files) else ""
        body = {
            "files": [{"name": n, "totalBytes": b, "creationDate": "2023-01-19"} for n, b in page],
            "nextPageToken": token,
        }
        return json.dumps(body).encode()

    def gets(self, path):
        return [r for r in self.requests if r[0] == "GET" and r[1] == path]


@pytest.fixture
def server():
    s = FakeServer()
    s.thread.start()
    yield s
    s.httpd.shutdown()
    s.httpd.server_close()


def md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


def file_md5(path) -> str:
    with open(path, "rb") as f:
        return md5(f.read())


# --- Gravity Spy: Zenodo record JSON + files -------------------------------------------------

H5 = "/api/records/1476551/files/trainingsetv1d1.h5/content"


def png_tarball() -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w:gz") as tar:
        for label in ("Blip", "Whistle"):
            data = label.encode() * 10
            info = tarfile.TarInfo(f"TrainingSet/{label}/train/H1_{label}1_spectrogram_0.5.png")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return out.getvalue()


def zenodo_entry(server, key, body, legacy=False):
    """One file of a Zenodo record JSON: the current (InvenioRDM) keys, or the legacy ones."""
    link = f"{server.url}/api/records/{{rec}}/files/{urllib.parse.quote(key)}/content"
    if legacy:
        return {
            "id": "f" + md5(key.encode())[:8],
            "filename": key,
            "filesize": len(body),
            "checksum": md5(body),
            "links": {"download": link},
        }
    return {
        "id": md5(key.encode())[:8],
        "key": key,
        "size": len(body),
        "checksum": f"md5:{md5(body)}",
        "links": {"self": link},
    }


def zenodo_record(server, record, bodies, legacy=False):
    """Serves `bodies` ({key: bytes}) as Zenodo record `record`: JSON at /api/records/<id>,
    bytes at the file links."""
    entries = []
    for key, body in bodies.items():
        entry = json.loads(
            json.dumps(zenodo_entry(server, key, body, legacy)).replace("{rec}", record)
        )
        entries.append(entry)
        server.files[f"/api/records/{record}/files/{key}/content"] = body
    doc = {
        "id": int(record),
        "doi": f"10.5281/zenodo.{record}",
        "files": entries,
        "metadata": {"title": "Gravity Spy Training Set"},
    }
    server.files[f"/api/records/{record}"] = json.dumps(doc).encode()


@pytest.fixture
def zenodo(server):
    """Record 1476551 holds the v1d1 files and, as decoys, v1d0 ones (a pattern like `\\.h5$`
    would take both); record 1476156 holds v1d0 only, in the legacy key names."""
    rng = np.random.default_rng(0)
    bodies = {
        "trainingsetv1d1.h5": rng.bytes(300_000),
        "trainingset_v1d1_metadata.csv": b"gravityspy_id,label,sample_type\nabc,Blip,train\n",
        "trainingsetv1d1.tar.gz": png_tarball(),
    }
    v1d0 = {
        "trainingsetv1d0.h5": rng.bytes(1000),
        "trainingset_v1d0_metadata.csv": b"gravityspy_id,label\nold,Blip\n",
    }
    zenodo_record(server, "1476551", {**bodies, **v1d0})
    zenodo_record(server, "1476156", v1d0, legacy=True)
    return bodies


def get_gravityspy(server, to, **kw):
    return download.download("gravityspy", str(to), url=f"{server.url}/api", **{**FAST, **kw})


def test_gravityspy_download_verifies_and_rerun_is_idempotent(server, zenodo, tmp_path, capsys):
    to = tmp_path / "gs"
    summary = get_gravityspy(server, to, pngs=True, progress=True)  # the tqdm bar, if installed
    for key, body in zenodo.items():
        assert file_md5(to / key) == md5(body)
    assert (to / "png" / "Blip" / "train" / "H1_Blip1_spectrogram_0.5.png").read_bytes() == (
        b"Blip" * 10
    )
    assert sorted(summary.downloaded) == sorted(zenodo) and not summary.skipped
    assert summary.bytes_total == sum(map(len, zenodo.values()))
    out = capsys.readouterr().out
    announce, final = out.index("still needed"), out.index("3 downloaded")
    assert announce < final and str(to) in out[final - 200 :]

    server.requests.clear()
    again = get_gravityspy(server, to, pngs=True)
    assert sorted(again.skipped) == sorted(zenodo) and not again.downloaded
    assert [r[1] for r in server.requests] == ["/api/records/1476551"]  # no file transferred


def test_gravityspy_fetches_the_v1d1_files_the_glitch_config_reads(server, zenodo, tmp_path):
    """Issue 25 item 1: the v1d1 record and exact names, not v1d0 by a pattern."""
    from jaxlab import cli
    from jaxlab.configs import glitch

    config = glitch.get_config()
    to = tmp_path / "gs"
    with pytest.raises(SystemExit) as exit_info:  # `jaxlab download gravityspy`, as a user runs it
        cli.main(["jaxlab", "download", "gravityspy", f"--to={to}", f"url={server.url}/api"])
    assert not exit_info.value.code
    files = sorted(p.name for p in to.iterdir() if not p.name.startswith("."))
    assert files == sorted([config.data.h5_name, config.data.metadata_name])
    assert file_md5(to / config.data.h5_name) == md5(zenodo["trainingsetv1d1.h5"])
    assert not list(to.glob("*v1d0*"))
    assert server.gets("/api/records/1476551") and not server.gets("/api/records/1476156")


def test_gravityspy_v1d0_from_its_legacy_record(server, zenodo, tmp_path):
    to = tmp_path / "old"
    summary = get_gravityspy(server, to, version="v1d0")
    assert sorted(summary.downloaded) == ["trainingset_v1d0_metadata.csv", "trainingsetv1d0.h5"]
    assert server.gets("/api/records/1476156")
    with pytest.raises(ValueError, match="unknown version 'v2'; choose v1d1 or v1d0"):
        get_gravityspy(server, to, version="v2")
    with pytest.raises(download.DownloadError, match="no trainingsetv1d1.h5, .*check version="):
        get_gravityspy(server, to, record="1476156")


def test_zenodo_record_shapes_give_content_urls_and_md5():
    from jaxlab.download import sources

    api = "https://zenodo.org/api"
    entry = {"key": "a b.h5", "size": 3, "checksum": "md5:" + "0" * 32}
    current = sources.zenodo_files({"files": [entry]}, api, "1")
    assert current == [
        {
            "key": "a b.h5",
            "size": 3,
            "md5": "0" * 32,
            "url": f"{api}/records/1/files/a%20b.h5/content",
        }
    ]
    linked = {**entry, "links": {"self": f"{api}/records/1/files/a%20b.h5"}}
    assert sources.zenodo_files({"files": {"entries": {"x": linked}}}, api, "1") == current
    legacy = {
        "filename": "a b.h5",
        "filesize": 3,
        "checksum": "A" * 32,
        "links": {"download": f"{api}/files/bucket/a%20b.h5"},
    }
    assert sources.zenodo_files({"files": [legacy]}, api, "1") == [
        {"key": "a b.h5", "size": 3, "md5": "a" * 32, "url": f"{api}/files/bucket/a%20b.h5"}
    ]
    with pytest.raises(download.DownloadError, match="records/1: the record lists no files"):
        sources.zenodo_files({"files": []}, api, "1")


def test_file_key_with_spaces_is_quoted_in_the_request(server, tmp_path):
    """Issue 25 item 5: a link holding a raw space (as a record may give it) still downloads."""
    from jaxlab.download import sources

    body = b"x" * 5000
    raw_link = f"{server.url}/api/records/7/files/my data.h5/content"
    server.files["/api/records/7/files/my data.h5/content"] = body
    entry = {
        "key": "my data.h5",
        "size": len(body),
        "checksum": f"md5:{md5(body)}",
        "links": {"self": raw_link},
    }
    (item,) = sources.zenodo_files({"files": [entry]}, f"{server.url}/api", "7")
    remote = fetch.Remote(item["key"], item["url"], size=item["size"], md5=item["md5"])
    summary = fetch.fetch_all("zenodo", [remote], str(tmp_path), fetch.Options(**FAST))
    assert summary.downloaded == ["my data.h5"] and (tmp_path / "my data.h5").read_bytes() == body
    assert fetch.safe_url(raw_link).endswith("/my%20data.h5/content")
    assert fetch.safe_url("https://h/a%20b?x=1&y=2") == "https://h/a%20b?x=1&y=2"  # unchanged


def test_429_waits_as_long_as_retry_after_says(server, zenodo, tmp_path, monkeypatch):
    """Issue 25 item 5: Zenodo's Retry-After on 429 is honoured (not the 1 ms backoff)."""
    sleeps = []
    monkeypatch.setattr(fetch, "_pause", lambda seconds, stop=None: sleeps.append(seconds))
    server.faults["/api/records/1476551"] = ["429:7"]
    server.faults["/api/records/1476551/files/trainingsetv1d1.h5/content"] = ["429:3", "503"]
    get_gravityspy(server, tmp_path / "gs", workers=1)
    assert sleeps == [7.0, 3.0, 0.002]  # Retry-After twice, then the backoff after a 503
    assert file_md5(tmp_path / "gs" / "trainingsetv1d1.h5") == md5(zenodo["trainingsetv1d1.h5"])
    assert fetch.retry_after_s("Wed, 21 Oct 2015 07:28:00 GMT") == 0.0  # a date in the past
    assert fetch.retry_after_s("soon") is None


def test_python_floor_allows_tarfile_data_filter():
    """Issue 25 item 5: `extractall(filter="data")` exists from Python 3.11.4 on; the project
    must not claim an older 3.11."""
    import pathlib
    import tomllib

    from packaging.specifiers import SpecifierSet

    root = pathlib.Path(__file__).resolve().parents[1]
    spec = SpecifierSet(
        tomllib.loads((root / "pyproject.toml").read_text())["project"]["requires-python"]
        .split("#")[0]
        .strip()
    )
    assert not spec.contains("3.11.3") and spec.contains("3.11.4") and spec.contains("3.12.0")
    assert hasattr(tarfile, "data_filter")


def test_interrupted_transfer_resumes_from_part_file(server, zenodo, tmp_path):
    to = tmp_path / "gs"
    server.faults[H5] = ["drop:100000", "503"]  # a drop, then no progress: the run gives up
    with pytest.raises(download.DownloadError, match="100000 bytes kept in .*rerun to resume"):
        get_gravityspy(server, to, retries=0)
    assert os.path.getsize(to / "trainingsetv1d1.h5.part") == 100_000
    assert not (to / "trainingsetv1d1.h5").exists()
    server.requests.clear()
    get_gravityspy(server, to, retries=0)
    assert [r[2] for r in server.gets(H5)] == ["bytes=100000-299999"]
    assert file_md5(to / "trainingsetv1d1.h5") == md5(zenodo["trainingsetv1d1.h5"])
    assert not (to / "trainingsetv1d1.h5.part").exists()


def test_dropped_connections_resume_within_one_run(server, zenodo, tmp_path):
    to = tmp_path / "gs"
    server.faults[H5] = ["drop:50000", "drop:70000", "drop:10"]
    get_gravityspy(server, to, retries=1)  # progress resets the count of failures
    assert [r[2] for r in server.gets(H5)] == [
        None,
        "bytes=50000-299999",
        "bytes=120000-299999",
        "bytes=120010-299999",
    ]
    assert file_md5(to / "trainingsetv1d1.h5") == md5(zenodo["trainingsetv1d1.h5"])


def test_a_failing_file_stops_transfers_in_flight_keeping_their_part(server, tmp_path):
    """With several workers, a 404 on one file ends the run at once: the long transfer beside
    it stops at its next chunk and keeps its .part (resumed by the next run). The same stop
    serves Ctrl-C."""
    body = bytes(range(256)) * 800  # 204.8 kB: about 4 s at the slow rate
    server.files["/big.bin"] = body
    server.faults["/big.bin"] = ["slow"]
    server.faults["/gone.bin"] = ["wait:0.2"]  # the 404 comes while big.bin is under way
    remotes = [
        fetch.Remote("big.bin", f"{server.url}/big.bin", size=len(body)),
        fetch.Remote("gone.bin", f"{server.url}/gone.bin", size=10),
    ]
    options = fetch.Options(**{**FAST, "chunk_bytes": 1000, "workers": 2})
    started = time.monotonic()
    with pytest.raises(fetch.NotFoundError, match="gone.bin: not found"):
        fetch.fetch_all("demo", remotes, str(tmp_path), options)
    assert time.monotonic() - started < 2.0
    kept = (tmp_path / "big.bin.part").stat().st_size
    assert 0 < kept < len(body) / 2 and not (tmp_path / "big.bin").exists()
    fetch.fetch_all("demo", remotes[:1], str(tmp_path), options)
    assert (tmp_path / "big.bin").read_bytes() == body
    assert server.requests[-1][2] == f"bytes={kept}-{len(body) - 1}"


def test_corrupted_file_is_caught_by_its_checksum(server, zenodo, tmp_path):
    to = tmp_path / "gs"
    good = zenodo["trainingsetv1d1.h5"]
    server.files[H5] = good[:1000] + bytes([good[1000] ^ 1]) + good[1001:]
    with pytest.raises(download.ChecksumError) as error:
        get_gravityspy(server, to)
    message = str(error.value)
    assert "trainingsetv1d1.h5" in message and md5(good) in message and "md5" in message
    assert not (to / "trainingsetv1d1.h5").exists()
    assert not (to / "trainingsetv1d1.h5.part").exists()


def test_404_names_the_url(server, zenodo, tmp_path):
    del server.files[H5]
    with pytest.raises(download.DownloadError, match=f"{server.url}{H5}: not found .HTTP 404"):
        get_gravityspy(server, tmp_path / "gs")
    with pytest.raises(download.DownloadError, match="/api/records/999: not found"):
        get_gravityspy(server, tmp_path / "gs", record="999")


def test_503_is_retried_with_exponential_backoff(server, zenodo, tmp_path, monkeypatch):
    sleeps = []
    monkeypatch.setattr(fetch, "_pause", lambda seconds, stop=None: sleeps.append(seconds))
    server.faults["/api/records/1476551"] = ["503", "503"]
    server.faults[H5] = ["503"]
    get_gravityspy(server, tmp_path / "gs")
    assert sleeps == [0.001, 0.002, 0.001]
    assert len(server.gets("/api/records/1476551")) == 3 and len(server.gets(H5)) == 2
    assert file_md5(tmp_path / "gs" / "trainingsetv1d1.h5") == md5(zenodo["trainingsetv1d1.h5"])

    server.faults[H5] = ["503"] * 10
    with pytest.raises(download.DownloadError, match="HTTP 503.*gave up after 3 attempts"):
        get_gravityspy(server, tmp_path / "other", retries=2)


def test_disk_space_is_checked_before_any_transfer(server, zenodo, tmp_path, monkeypatch):
    usage = types.SimpleNamespace(total=10**9, used=10**9 - 1000, free=1000)
    monkeypatch.setattr(fetch.shutil, "disk_usage", lambda path: usage)
    with pytest.raises(download.DownloadError, match=r"needs 300\.\d kB more but only 1\.0 kB"):
        get_gravityspy(server, tmp_path / "gs")
    assert not server.gets(H5)


def test_progress_without_tqdm_logs_rate_and_eta(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "tqdm", None)
    bar = report.Progress(total=4000, desc="demo", enabled=True, every_s=0.0)
    bar.update(1000)
    bar.close()
    err = capsys.readouterr().err
    assert "demo: 1.0 kB / 4.0 kB (25%)" in err and "/s, ETA" in err


# --- HRRR: .idx byte ranges -------------------------------------------------------------------

# (idx name, idx level, GRIB2 code as synthetic.write_message takes it, selected?)
HRRR_MESSAGES = (
    ("REFC", "entire atmosphere", (0, 16, 196, 10, 0), True),
    ("CAPE", "90-0 mb above ground", (0, 7, 6, 108, 9000, 0), False),
    ("CAPE", "180-0 mb above ground", (0, 7, 6, 108, 18000, 0), False),
    ("CIN", "180-0 mb above ground", (0, 7, 7, 108, 18000, 0), False),
    ("TMP", "500 mb", (0, 0, 0, 100, 500), False),
    ("TMP", "2 m above ground", (0, 0, 0, 103, 2), True),
    ("DPT", "2 m above ground", (0, 0, 6, 103, 2), True),
    ("UGRD", "10 m above ground", (0, 2, 2, 103, 10), True),
    ("VGRD", "10 m above ground", (0, 2, 3, 103, 10), True),
    ("CIN", "90-0 mb above ground", (0, 7, 7, 108, 9000, 0), False),
    ("CAPE", "255-0 mb above ground", (0, 7, 6, 108, 25500, 0), False),
    ("CAPE", "surface", (0, 7, 6, 1, 0), True),
    ("CIN", "surface", (0, 7, 7, 1, 0), True),  # last message: its end comes from a HEAD request
)


def write_hrrr(time, seed, omit=(), lead=0):
    """One small GRIB2 file with decoys (CAPE/CIN over three pressure layers, 500 mb TMP) and its
    .idx text (`number:offset:d=YYYYMMDDHH:NAME:LEVEL:FORECAST:`); `omit` leaves out messages
    ((NAME, LEVEL) pairs), as in early archive years."""
    from jaxlab.weather import synthetic

    rng = np.random.default_rng(seed)
    base = {
        "REFC": 10.0,
        "TMP": 290.0,
        "DPT": 283.0,
        "UGRD": 3.0,
        "VGRD": -2.0,
        "CAPE": 800.0,
        "CIN": -40.0,
    }
    out, lines, messages = io.BytesIO(), [], []
    kept = [m for m in HRRR_MESSAGES if (m[0], m[1]) not in omit]
    for number, (name, level, code, _) in enumerate(kept, 1):
        offset = out.tell()
        values = base[name] + rng.uniform(-5, 5, size=(6, 8))
        if "mb" in level:
            values = values * 0.5 - (10 if name == "TMP" else 0)
        synthetic.write_message(out, values, time=time, dx_m=3000.0, code=code)
        forecast = "anl" if lead == 0 else f"{lead} hour fcst"
        lines.append(f"{number}:{offset}:d={time:%Y%m%d%H}:{name}:{level}:{forecast}:")
        messages.append(out.getvalue()[offset:])
    return out.getvalue(), "\n".join(lines) + "\n", messages


def grib_codes(path):
    import eccodes

    keys = ("discipline", "parameterCategory", "parameterNumber", "typeOfFirstFixedSurface")
    found = []
    with open(path, "rb") as f:
        while (h := eccodes.codes_grib_new_from_file(f)) is not None:
            found.append(tuple(eccodes.codes_get_long(h, k) for k in keys))
            eccodes.codes_release(h)
    return found


def test_hrrr_fetches_only_the_seven_fields_by_idx_byte_ranges(server, tmp_path):
    import datetime as dt

    from jaxlab.weather import data as weather_data

    originals = {}
    for hour in (0, 1):
        body, idx, messages = write_hrrr(dt.datetime(2024, 6, 1, hour), seed=hour)
        rel = f"hrrr.20240601/conus/hrrr.t{hour:02d}z.wrfsfcf00.grib2"
        server.files[f"/{rel}"], server.files[f"/{rel}.idx"] = body, idx.encode()
        source = tmp_path / f"source{hour}.grib2"
        source.write_bytes(body)
        originals[rel] = (source, body, messages)
    to = tmp_path / "hrrr"
    summary = download.download(
        "hrrr",
        str(to),
        start="2024-06-01",
        init_hours="0-1",
        forecast_hours=0,
        url=server.url,
        **FAST,
    )
    assert sorted(summary.downloaded) == sorted(originals)
    for rel, (source, body, messages) in originals.items():
        got = to / rel
        wanted = b"".join(m for m, (*_, keep) in zip(messages, HRRR_MESSAGES, strict=True) if keep)
        assert got.read_bytes() == wanted and len(wanted) < len(body)
        expected = [code[:3] + (code[3],) for *_, code, keep in HRRR_MESSAGES if keep]
        assert grib_codes(got) == expected  # exactly the seven, surface CAPE/CIN, 2 m TMP
        if rel.endswith("t00z.wrfsfcf00.grib2"):  # decoding is slow; the bytes are checked above
            decoded = weather_data.read_grib(str(got))
            reference = weather_data.read_grib(str(source))
            for name in weather_data.VARIABLES:
                np.testing.assert_array_equal(decoded[name], reference[name])
            assert decoded["time"] == reference["time"]
        assert all(r[2] for r in server.gets(f"/{rel}"))  # every GET asked for byte ranges
        assert ("HEAD", f"/{rel}", None) in server.requests  # the last message's end

    server.requests.clear()
    again = download.download(
        "hrrr", str(to), start="20240601", init_hours=[0, 1], url=server.url, **FAST
    )
    assert len(again.skipped) == 2 and not server.requests  # no index lookups either


def serve_hrrr(server, day, hour, lead, seed=0, omit=()):
    import datetime as dt

    body, idx, messages = write_hrrr(
        dt.datetime(day.year, day.month, day.day, hour), seed, omit, lead
    )
    rel = f"hrrr.{day:%Y%m%d}/conus/hrrr.t{hour:02d}z.wrfsfcf{lead:02d}.grib2"
    server.files[f"/{rel}"], server.files[f"/{rel}.idx"] = body, idx.encode()
    return rel, messages


def test_hrrr_gap_and_short_cycles_finish_with_the_rest_and_list_the_gaps(server, tmp_path, capsys):
    """Issue 25 item 3: a missing hour, a file lacking a field and a 00z/01z mix of forecast
    hours 17-20 (01z runs to 18 h): the rest is downloaded, the gaps listed, the run says so."""
    import datetime as dt

    from jaxlab import cli

    day = dt.date(2024, 6, 1)
    served = {}
    for hour, lead in [(0, 17), (0, 18), (0, 20), (1, 17)]:
        served[serve_hrrr(server, day, hour, lead, seed=hour + lead)[0]] = True
    gap = "hrrr.20240601/conus/hrrr.t01z.wrfsfcf18.grib2"  # neither file nor index
    partial, _ = serve_hrrr(server, day, 0, 19, omit=[("CAPE", "surface")])
    to = tmp_path / "hrrr"
    hours = dict(start="2024-06-01", init_hours="0-1", forecast_hours="17-20", url=server.url)
    with pytest.raises(download.MissingFilesError) as error:
        download.download("hrrr", str(to), **hours, **FAST)
    summary = error.value.summary
    assert sorted(summary.downloaded) == sorted(served)
    assert dict(summary.missing) == {
        gap: "not in the archive (no .idx, HTTP 404)",
        partial: "incomplete: the index has no CAPE:surface",
    }
    assert "2 of 6 requested files are missing" in str(error.value)
    for rel in served:
        assert (to / rel).stat().st_size > 0
    assert not (to / partial).exists()
    out = capsys.readouterr().out
    assert "2 (init hour, forecast hour) pairs a day left out" in out
    assert f"  {gap}: not in the archive" in out and f"  {partial}: incomplete" in out
    listed = (to / ".jaxlab-missing-hrrr.txt").read_text().splitlines()
    assert [line.split("\t")[0] for line in listed] == sorted([gap, partial])
    assert not [r for r in server.requests if "t01z.wrfsfcf19" in r[1] or "t01z.wrfsfcf20" in r[1]]

    # Accepting the gaps: by count, by share, or all; the command's exit status says which.
    again = download.download("hrrr", str(to), **hours, allow_missing=2, **FAST)
    assert sorted(again.skipped) == sorted(served) and len(again.missing) == 2
    download.download("hrrr", str(to), **hours, allow_missing="34%", **FAST)
    with pytest.raises(download.MissingFilesError, match="allowed: 1"):
        download.download("hrrr", str(to), **hours, allow_missing="20%", **FAST)
    args = ["download", "hrrr", f"--to={to}", "start=2024-06-01", "init_hours=0-1"]
    args += ["forecast_hours=17-20", f"url={server.url}", "backoff_s=0.001", "retries=1"]
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["jaxlab", *args])
    assert exit_info.value.code == download.EXIT_MISSING == 3
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "2 of 6 requested files are missing" in err
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["jaxlab", *args, "allow_missing=all"])
    assert not exit_info.value.code
    with pytest.raises(ValueError, match="allow_missing='some': expected a count"):
        download.download("hrrr", str(to), **hours, allow_missing="some", **FAST)


def test_hrrr_forecast_hours_are_checked_against_each_cycles_length():
    from jaxlab.download import sources

    wanted, dropped = sources.hrrr_requests("2024-06-01", None, "0-1", "0-48")
    assert dropped == 30  # 01z: 19..48 h
    assert {(h, f) for _, h, f in wanted} == {(0, f) for f in range(49)} | {
        (1, f) for f in range(19)
    }
    assert [sources.hrrr_max_forecast_hour(h) for h in (0, 5, 6, 12, 18, 23)] == [
        48,
        18,
        48,
        48,
        48,
        18,
    ]
    with pytest.raises(ValueError, match="no cycle in init_hours .1,. runs to forecast hours"):
        sources.hrrr_requests("2024-06-01", None, 1, "19-20")
    with pytest.raises(ValueError, match="forecast_hours must lie in 0..48"):
        sources.hrrr_requests("2024-06-01", None, 0, 49)


def test_hrrr_changed_fields_are_fetched_again(server, tmp_path):
    """Issue 25 item 5: a rerun with other `fields` refetches files the manifest already has."""
    import datetime as dt

    rel, messages = serve_hrrr(server, dt.date(2024, 6, 1), 0, 0)
    to = tmp_path / "hrrr"
    first = download.download("hrrr", str(to), start="2024-06-01", url=server.url, **FAST)
    assert first.downloaded == [rel]
    fields = [("TMP", "2 m above ground"), ("CAPE", "180-0 mb above ground")]
    second = download.download(
        "hrrr", str(to), start="2024-06-01", url=server.url, fields=fields, **FAST
    )
    assert second.downloaded == [rel] and not second.skipped
    names = [(n, lv) for n, lv, *_ in HRRR_MESSAGES]
    want = b"".join(m for m, key in zip(messages, names, strict=True) if key in fields)
    assert (to / rel).read_bytes() == want
    as_text = "TMP:2 m above ground; CAPE:180-0 mb above ground"  # the command line's form
    third = download.download(
        "hrrr", str(to), start="2024-06-01", url=server.url, fields=as_text, **FAST
    )
    assert third.skipped == [rel]
    with pytest.raises(ValueError, match="expected 'NAME:LEVEL;NAME:LEVEL'"):
        download.download("hrrr", str(to), start="2024-06-01", fields="TMP", **FAST)
    assert not list(to.rglob("*.part"))


# --- GreenEarthNet: S3 listing ---------------------------------------------------------------


def test_greenearthnet_tracks_from_paginated_listing_with_etag_md5(server, tmp_path):
    cubes = {
        f"earthnet2021x/{track}/{region}/{name}.nc": f"{track}{name}".encode() * 50
        for track, region, name in [
            ("train", "r1", "a"),
            ("train", "r2", "b"),
            ("train", "r2", "c"),
            ("val_chopped", "r1", "v"),
            ("ood-t_chopped", "r3", "t"),
        ]
    }
    server.buckets["/earthnet"] = cubes
    server.files.update({f"/earthnet/{k}": v for k, v in cubes.items()})
    to = tmp_path / "gen"
    summary = download.download(
        "greenearthnet", str(to), tracks="train,ood-t_chopped", url=f"{server.url}/earthnet", **FAST
    )
    assert sorted(summary.downloaded) == [
        "ood-t_chopped/r3/t.nc",
        "train/r1/a.nc",
        "train/r2/b.nc",
        "train/r2/c.nc",
    ]
    assert (to / "train/r2/c.nc").read_bytes() == cubes["earthnet2021x/train/r2/c.nc"]
    assert not (to / "val_chopped").exists()

    limited = download.download(
        "greenearthnet",
        str(tmp_path / "one"),
        tracks="train",
        limit=1,
        url=f"{server.url}/earthnet",
        **FAST,
    )
    assert limited.downloaded == ["train/r1/a.nc"]

    server.files["/earthnet/earthnet2021x/val_chopped/r1/v.nc"] = b"x" * len(
        cubes["earthnet2021x/val_chopped/r1/v.nc"]
    )
    with pytest.raises(download.ChecksumError, match="val_chopped/r1/v.nc"):
        download.download(
            "greenearthnet", str(to), tracks="val_chopped", url=f"{server.url}/earthnet", **FAST
        )
    with pytest.raises(ValueError, match="unknown track.*'ood-x'.*ood-t_chopped"):
        download.download("greenearthnet", str(to), tracks="ood-x", url=server.url, **FAST)


def test_greenearthnet_multipart_etags_are_not_taken_for_md5(server, tmp_path):
    """A multipart upload's ETag ("<hex>-<parts>") is no md5 of the content: size-checked only."""
    body = b"cube" * 1000
    key = "earthnet2021x/train/r1/big.nc"
    server.buckets["/earthnet"] = {key: body}
    server.files[f"/earthnet/{key}"] = body
    server.etags[key] = "d41d8cd98f00b204e9800998ecf8427e-3"
    summary = download.download(
        "greenearthnet", str(tmp_path / "gen"), url=f"{server.url}/earthnet", **FAST
    )
    assert summary.downloaded == ["train/r1/big.nc"]
    assert (tmp_path / "gen/train/r1/big.nc").read_bytes() == body


def test_greenearthnet_stops_when_most_etags_are_not_md5(server, tmp_path):
    """Issue 25 item 5: ETags that look like md5 but are not must not delete file after file;
    the run stops with one error naming etag_md5=false, which then downloads them."""
    cubes = {f"earthnet2021x/train/r1/c{i}.nc": bytes([i]) * 3000 for i in range(8)}
    server.buckets["/earthnet"] = cubes
    server.files.update({f"/earthnet/{k}": v for k, v in cubes.items()})
    server.etags.update({k: md5(k.encode()) for k in cubes})  # 32 hex digits, not the content's
    to = tmp_path / "gen"
    with pytest.raises(download.ChecksumError, match="likely not sums of the content") as error:
        download.download("greenearthnet", str(to), url=f"{server.url}/earthnet", **FAST, workers=1)
    assert "etag_md5=false" in str(error.value)
    assert len(server.gets("/earthnet/earthnet2021x/train/r1/c7.nc")) == 0  # stopped early
    summary = download.download(
        "greenearthnet", str(to), url=f"{server.url}/earthnet", etag_md5=False, **FAST
    )
    assert len(summary.downloaded) == 8 and not list(to.rglob("*.part"))


def test_greenearthnet_downloads_run_in_a_bounded_pool(server, tmp_path, monkeypatch):
    """Issue 25 item 5: several cubes at a time, never more than `workers`."""
    cubes = {f"earthnet2021x/train/r{i % 3}/c{i}.nc": bytes([i]) * 2000 for i in range(12)}
    server.buckets["/earthnet"] = cubes
    server.files.update({f"/earthnet/{k}": v for k, v in cubes.items()})
    active, peak, lock = [0], [0], threading.Lock()
    original = fetch._fill

    def slow_fill(*args, **kwargs):
        with lock:
            active[0] += 1
            peak[0] = max(peak[0], active[0])
        try:
            import time

            time.sleep(0.05)
            return original(*args, **kwargs)
        finally:
            with lock:
                active[0] -= 1

    monkeypatch.setattr(fetch, "_fill", slow_fill)
    summary = download.download(
        "greenearthnet", str(tmp_path / "gen"), url=f"{server.url}/earthnet", workers=3, **FAST
    )
    assert len(summary.downloaded) == 12 and peak[0] == 3
    for key, body in cubes.items():
        assert (tmp_path / "gen" / key.removeprefix("earthnet2021x/")).read_bytes() == body
    manifest = fetch.load_manifest(str(tmp_path / "gen"))
    assert len([k for k in manifest if k.endswith(".nc")]) == 12


def test_unknown_dataset_and_options_are_errors(tmp_path):
    with pytest.raises(ValueError, match="unknown dataset 'era5'; choose one of hrrr"):
        download.download("era5", str(tmp_path))
    with pytest.raises(TypeError, match=r"unknown options \['trakcs'\]"):
        download.download("greenearthnet", str(tmp_path), trakcs="train")
    (tmp_path / "file").write_text("x")
    with pytest.raises(download.DownloadError, match="is a file; --to must be a folder"):
        download.download("olist", str(tmp_path / "file"))


# --- Kaggle: a stand-in client that talks HTTP to the local server -------------------------

COMPETITION = "icecube-neutrinos-in-deep-ice"
LIST_PATH = f"/kaggle/competitions/{COMPETITION}/files"


class HttpError(Exception):
    """What the client raises for an HTTP error answer (requests' HTTPError: `.response`)."""

    def __init__(self, status, headers):
        super().__init__(f"{status} Client Error for url")
        self.response = types.SimpleNamespace(status_code=status, headers=headers)


def fake_kaggle(monkeypatch, server, check_length=True):
    """Installs a stand-in `kaggle` package whose KaggleApi has the real client's method names
    and arguments and its behaviour where jaxlab depends on it: authentication by
    KAGGLE_API_TOKEN, ~/.kaggle/access_token, kaggle.json or KAGGLE_USERNAME/KAGGLE_KEY (else it
    prints its advice and exits 1); a paged file list; downloads written straight to
    `path/<name>`, resuming a shorter file found there. `check_length=False` imitates a transfer
    that ends early without an error. Returns the list of calls."""
    calls = []

    class KaggleApi:
        def authenticate(self):
            calls.append("authenticate")
            home = os.path.join(os.path.expanduser("~"), ".kaggle")
            config = os.environ.get("KAGGLE_CONFIG_DIR") or home
            token = os.environ.get("KAGGLE_API_TOKEN")
            token_file = os.path.join(home, "access_token")
            if not token and os.path.isfile(token_file):
                with open(token_file) as f:
                    token = f.read().strip()
            if token and token != "expired":
                return
            if os.environ.get("KAGGLE_USERNAME") and os.environ.get("KAGGLE_KEY"):
                return
            if os.path.isfile(os.path.join(config, "kaggle.json")):
                return
            print("You must authenticate before you can call the Kaggle API.")
            print("Follow the instructions to authenticate at: https://github.com/Kaggle/...")
            sys.exit(1)

        def _get(self, path, headers=None):
            request = urllib.request.Request(
                server.url + urllib.parse.quote(path, safe="/?=&"), headers=headers or {}
            )
            try:
                return urllib.request.urlopen(request, timeout=10)
            except urllib.error.HTTPError as e:
                raise HttpError(e.code, e.headers) from None

        def competition_list_files(self, competition, page_token=None, page_size=20):
            calls.append(("list", page_token, page_size))
            query = urllib.parse.urlencode({"pageToken": page_token or "", "pageSize": page_size})
            with self._get(f"/kaggle/competitions/{competition}/files?{query}") as response:
                doc = json.load(response)
            files = [
                types.SimpleNamespace(name=f["name"], ref=f["name"], total_bytes=f["totalBytes"])
                for f in doc["files"]
            ]
            return types.SimpleNamespace(files=files, next_page_token=doc["nextPageToken"])

        def competition_download_file(
            self, competition, file_name, path=None, force=False, quiet=False
        ):
            calls.append(file_name)
            zipped = file_name in server.kaggle_zipped
            outfile = os.path.join(path, os.path.basename(file_name) + (".zip" if zipped else ""))
            have = os.path.getsize(outfile) if os.path.exists(outfile) else 0
            headers = {"Range": f"bytes={have}-"} if have else {}
            url = f"/kaggle/download/{competition}/{file_name}" + (".zip" if zipped else "")
            with self._get(url, headers) as response, open(outfile, "ab") as f:
                while chunk := response.read(4096):
                    f.write(chunk)
                if check_length and response.length:
                    raise ConnectionError(
                        f"Connection broken: IncompleteRead ({response.length} bytes more expected)"
                    )

        def dataset_download_files(self, dataset, path=None, force=False, quiet=True, unzip=False):
            calls.append(dataset)
            with self._get(f"/kaggle/datasets/{dataset}.zip") as response:
                data = response.read()
            with zipfile.ZipFile(io.BytesIO(data)) as archive:
                archive.extractall(path)

    module = types.ModuleType("kaggle.api.kaggle_api_extended")
    module.KaggleApi = KaggleApi
    monkeypatch.setitem(sys.modules, "kaggle", types.ModuleType("kaggle"))
    monkeypatch.setitem(sys.modules, "kaggle.api", types.ModuleType("kaggle.api"))
    monkeypatch.setitem(sys.modules, "kaggle.api.kaggle_api_extended", module)
    return calls


ICECUBE_FILES = {
    "sample_submission.parquet": b"PAR1" + b"s" * 30,
    "sensor_geometry.csv": b"sensor_id,x,y,z\n0,1,2,3\n",
    "test/batch_661.parquet": b"PAR1" + b"t" * 40,
    "test_meta.parquet": b"PAR1" + b"u" * 20,
    "train/batch_1.parquet": b"PAR1" + b"b" * 200,
    "train/batch_10.parquet": b"PAR1" + b"d" * 90,
    "train/batch_2.parquet": b"PAR1" + bytes(range(256)) * 8,
    "train_meta.parquet": b"PAR1" + b"m" * 100,
}


@pytest.fixture
def kaggle(server, monkeypatch, tmp_path):
    """The competition's files and the Olist zip on the server, pages of at most 3 files, a
    token in KAGGLE_API_TOKEN and an empty home folder."""
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    for name in ("KAGGLE_USERNAME", "KAGGLE_KEY", "KAGGLE_CONFIG_DIR", "KAGGLE_API_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("KAGGLE_API_TOKEN", "KGAT_0123456789abcdef")
    server.kaggle_page_max = 3
    server.kaggle_lists[LIST_PATH] = [(n, len(b)) for n, b in ICECUBE_FILES.items()]
    for name, body in ICECUBE_FILES.items():
        server.files[f"/kaggle/download/{COMPETITION}/{name}"] = body
    server.kaggle_zipped = {"train/batch_1.parquet"}  # the client gets some files zipped
    zipped = io.BytesIO()
    with zipfile.ZipFile(zipped, "w") as z:
        z.writestr("train/batch_1.parquet", ICECUBE_FILES["train/batch_1.parquet"])
    server.files[f"/kaggle/download/{COMPETITION}/train/batch_1.parquet.zip"] = zipped.getvalue()
    olist = io.BytesIO()
    with zipfile.ZipFile(olist, "w") as z:
        for name in kaggle_data.OLIST_FILES:
            z.writestr(name, "a,b\n1,2\n")
    server.files["/kaggle/datasets/olistbr/brazilian-ecommerce.zip"] = olist.getvalue()
    return server


def test_kaggle_current_token_methods_are_left_to_the_client(kaggle, monkeypatch, tmp_path):
    """Issue 25 item 2: KAGGLE_API_TOKEN and ~/.kaggle/access_token work (no kaggle.json)."""
    calls = fake_kaggle(monkeypatch, kaggle)
    summary = download.download("olist", str(tmp_path / "olist"))
    assert sorted(summary.downloaded) == sorted(kaggle_data.OLIST_FILES)
    assert calls == ["authenticate", "olistbr/brazilian-ecommerce"]
    assert not (tmp_path / "olist" / kaggle_data.STAGING).exists()

    monkeypatch.delenv("KAGGLE_API_TOKEN")
    token = tmp_path / "home" / ".kaggle" / "access_token"
    token.parent.mkdir(parents=True)
    token.write_text("KGAT_0123456789abcdef\n")
    summary = download.download("icecube", str(tmp_path / "ice"), batches=1)
    assert "train/batch_1.parquet" in summary.downloaded


def test_kaggle_without_credentials_names_every_method(kaggle, monkeypatch, tmp_path):
    fake_kaggle(monkeypatch, kaggle)
    monkeypatch.delenv("KAGGLE_API_TOKEN")
    with pytest.raises(download.DownloadError) as e:
        download.download("icecube", str(tmp_path / "ice"))
    message = str(e.value)
    assert message.startswith("No Kaggle credentials found:") and "\n" not in message
    for method in (
        "KAGGLE_API_TOKEN",
        "~/.kaggle/access_token",
        "kaggle.json",
        "KAGGLE_USERNAME and KAGGLE_KEY",
        "Generate New Token",
    ):
        assert method in message
    monkeypatch.setenv("KAGGLE_API_TOKEN", "expired")  # the client ignores a token it rejects
    with pytest.raises(
        download.DownloadError,
        match="refused the credentials in KAGGLE_API_TOKEN"
        r" \(You must authenticate",
    ):
        download.download("olist", str(tmp_path / "olist"))
    for module in ("kaggle", "kaggle.api", "kaggle.api.kaggle_api_extended"):
        monkeypatch.setitem(sys.modules, module, None)  # import fails as if not installed
    with pytest.raises(download.DownloadError, match="not installed: pip install kaggle"):
        download.download("olist", str(tmp_path / "olist"))


def test_kaggle_rules_not_accepted_names_the_rules_page(kaggle, monkeypatch, tmp_path):
    fake_kaggle(monkeypatch, kaggle)
    kaggle.faults[f"/kaggle/download/{COMPETITION}/sensor_geometry.csv"] = ["403"]
    with pytest.raises(download.DownloadError) as e:
        download.download("icecube", str(tmp_path / "ice"))
    message = str(e.value)
    assert "HTTP 403" in message and "accept the rules" in message
    assert "kaggle.com/competitions/icecube-neutrinos-in-deep-ice/rules" in message


def test_kaggle_icecube_lists_every_page_and_checks_every_size(
    kaggle, monkeypatch, tmp_path, capsys
):
    """Issue 25 item 4: every page of the file list is read, so every file has its size."""
    calls = fake_kaggle(monkeypatch, kaggle)
    sleeps = []
    monkeypatch.setattr(kaggle_data.time, "sleep", sleeps.append)
    kaggle.faults[LIST_PATH] = ["429:4"]  # rate limited once: waits as told
    to = tmp_path / "ice"
    summary = download.download("icecube", str(to), batches="1-2", progress=False)
    wanted = [
        "sensor_geometry.csv",
        "train_meta.parquet",
        "train/batch_1.parquet",
        "train/batch_2.parquet",
    ]
    for name in wanted:
        assert (to / name).read_bytes() == ICECUBE_FILES[name]
    assert sorted(summary.downloaded) == sorted(wanted)
    assert sleeps == [4.0]
    lists = [c for c in calls if isinstance(c, tuple)]
    assert lists == [("list", None, 200)] * 2 + [("list", "3", 200), ("list", "6", 200)]
    needed = sum(len(ICECUBE_FILES[n]) for n in wanted)
    assert f"{report.human_bytes(needed)} still needed" in capsys.readouterr().out
    assert not (to / kaggle_data.STAGING).exists() and not list(to.rglob("*.zip"))
    calls.clear()
    again = download.download("icecube", str(to), batches="1-2")
    assert len(again.skipped) == 4 and [c for c in calls if isinstance(c, str)] == ["authenticate"]
    with pytest.raises(download.DownloadError, match="has no train/batch_3.parquet"):
        download.download("icecube", str(to), batches="3")


@pytest.mark.parametrize("client_notices", [True, False], ids=["client_raises", "silent_cut"])
def test_kaggle_interrupted_file_is_fetched_again_on_rerun(
    kaggle, monkeypatch, tmp_path, client_notices
):
    """Issue 25 item 4: a batch cut mid-transfer (on the list's last page) is never taken for a
    complete file; the rerun resumes it and checks its size."""
    fake_kaggle(monkeypatch, kaggle, check_length=client_notices)
    path = f"/kaggle/download/{COMPETITION}/train/batch_2.parquet"
    kaggle.faults[path] = ["drop:1000"]
    to = tmp_path / "ice"
    with pytest.raises(download.DownloadError) as error:
        download.download("icecube", str(to), batches="2", retries=0)
    assert not (to / "train" / "batch_2.parquet").exists()  # a cut file never has the final name
    assert re.search("rerun to resume|kept in staging, rerun", str(error.value))
    staged = to / kaggle_data.STAGING / "train/batch_2.parquet" / "batch_2.parquet"
    assert staged.stat().st_size == 1000
    kaggle.requests.clear()
    summary = download.download("icecube", str(to), batches="2")
    assert "train/batch_2.parquet" in summary.downloaded
    assert (to / "train" / "batch_2.parquet").read_bytes() == ICECUBE_FILES["train/batch_2.parquet"]
    assert [r[2] for r in kaggle.gets(path)] == ["bytes=1000-"]
    assert not (to / kaggle_data.STAGING).exists()


def test_download_help_lists_the_datasets_with_sizes_and_options(capsys):
    from jaxlab import cli

    with pytest.raises(SystemExit) as exit_info:
        cli.main(["jaxlab", "download", "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert "--to" in out
    for name in download.DATASETS:
        block = out.partition(f"\n  {name}\n")[2].partition("\n  ")[0]
        assert "source:" in out.partition(f"\n  {name}\n")[2][:400], name
        assert block.strip().startswith("source:"), name
    facts = ["3.1 GB", "1476551", "allow_missing=0", "version=v1d1", "batches=1", "tracks=train"]
    facts += ["limit=", "about 45 MB", "workers=4", "exit status", "KAGGLE_API_TOKEN"]
    for fact in [*facts, "0-48 from the 00/06/12/18z"]:
        assert fact in out, fact
