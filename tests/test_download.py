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
import sys
import tarfile
import threading
import types
import urllib.parse
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
        return {"id": "f" + md5(key.encode())[:8], "filename": key, "filesize": len(body),
                "checksum": md5(body), "links": {"download": link}}  # fmt: skip
    return {"id": md5(key.encode())[:8], "key": key, "size": len(body),
            "checksum": f"md5:{md5(body)}", "links": {"self": link}}  # fmt: skip


def zenodo_record(server, record, bodies, legacy=False):
    """Serves `bodies` ({key: bytes}) as Zenodo record `record`: JSON at /api/records/<id>,
    bytes at the file links."""
    entries = []
    for key, body in bodies.items():
        entry = json.loads(json.dumps(zenodo_entry(server, key, body, legacy)).replace("{rec}", record))
        entries.append(entry)
        server.files[f"/api/records/{record}/files/{key}/content"] = body
    doc = {"id": int(record), "doi": f"10.5281/zenodo.{record}", "files": entries,
           "metadata": {"title": "Gravity Spy Training Set"}}  # fmt: skip
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
    from jaxlab.configs import glitch

    config = glitch.get_config()
    to = tmp_path / "gs"
    summary = get_gravityspy(server, to)
    assert sorted(summary.downloaded) == sorted([config.data.h5_name, config.data.metadata_name])
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
    legacy = {"filename": "a b.h5", "filesize": 3, "checksum": "A" * 32,
              "links": {"download": f"{api}/files/bucket/a%20b.h5"}}  # fmt: skip
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
    entry = {"key": "my data.h5", "size": len(body), "checksum": f"md5:{md5(body)}",
             "links": {"self": raw_link}}  # fmt: skip
    (item,) = sources.zenodo_files({"files": [entry]}, f"{server.url}/api", "7")
    remote = fetch.Remote(item["key"], item["url"], size=item["size"], md5=item["md5"])
    summary = fetch.fetch_all("zenodo", [remote], str(tmp_path), fetch.Options(**FAST))
    assert summary.downloaded == ["my data.h5"] and (tmp_path / "my data.h5").read_bytes() == body
    assert fetch.safe_url(raw_link).endswith("/my%20data.h5/content")
    assert fetch.safe_url("https://h/a%20b?x=1&y=2") == "https://h/a%20b?x=1&y=2"  # unchanged


def test_429_waits_as_long_as_retry_after_says(server, zenodo, tmp_path, monkeypatch):
    """Issue 25 item 5: Zenodo's Retry-After on 429 is honoured (not the 1 ms backoff)."""
    sleeps = []
    monkeypatch.setattr(fetch.time, "sleep", sleeps.append)
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
    spec = SpecifierSet(tomllib.loads((root / "pyproject.toml").read_text())["project"]
                        ["requires-python"].split("#")[0].strip())  # fmt: skip
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
    monkeypatch.setattr(fetch.time, "sleep", sleeps.append)
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
    ("TMP", "500 mb", (0, 0, 0, 100, 500), False),
    ("TMP", "2 m above ground", (0, 0, 0, 103, 2), True),
    ("DPT", "2 m above ground", (0, 0, 6, 103, 2), True),
    ("UGRD", "10 m above ground", (0, 2, 2, 103, 10), True),
    ("VGRD", "10 m above ground", (0, 2, 3, 103, 10), True),
    ("CIN", "90-0 mb above ground", (0, 7, 7, 108, 9000, 0), False),
    ("CAPE", "surface", (0, 7, 6, 1, 0), True),
    ("CIN", "surface", (0, 7, 7, 1, 0), True),  # last message: its end comes from a HEAD request
)


def write_hrrr(time, seed):
    """One small GRIB2 file with decoys (layer CAPE/CIN, 500 mb TMP) and its .idx text."""
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
    for number, (name, level, code, _) in enumerate(HRRR_MESSAGES, 1):
        offset = out.tell()
        values = base[name] + rng.uniform(-5, 5, size=(6, 8))
        if "mb" in level:
            values = values * 0.5 - (10 if name == "TMP" else 0)
        synthetic.write_message(out, values, time=time, dx_m=3000.0, code=code)
        lines.append(f"{number}:{offset}:d={time:%Y%m%d%H}:{name}:{level}:anl:")
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


def test_hrrr_missing_field_or_file_is_one_clear_error(server, tmp_path):
    import datetime as dt

    body, idx, _ = write_hrrr(dt.datetime(2024, 6, 1, 0), seed=0)
    rel = "/hrrr.20240601/conus/hrrr.t00z.wrfsfcf00.grib2"
    server.files[rel], server.files[rel + ".idx"] = body, idx.encode()
    with pytest.raises(download.DownloadError, match=r"\.idx: no message RETOP:cloud top"):
        download.download(
            "hrrr",
            str(tmp_path / "a"),
            start="2024-06-01",
            url=server.url,
            fields=[("RETOP", "cloud top")],
            **FAST,
        )
    with pytest.raises(download.DownloadError, match=r"t06z\.wrfsfcf00\.grib2\.idx: not found"):
        download.download(
            "hrrr", str(tmp_path / "b"), start="2024-06-01", init_hours=6, url=server.url, **FAST
        )


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


def test_unknown_dataset_and_options_are_errors(tmp_path):
    with pytest.raises(ValueError, match="unknown dataset 'era5'; choose one of hrrr"):
        download.download("era5", str(tmp_path))
    with pytest.raises(TypeError, match=r"unknown options \['trakcs'\]"):
        download.download("greenearthnet", str(tmp_path), trakcs="train")
    (tmp_path / "file").write_text("x")
    with pytest.raises(download.DownloadError, match="is a file; --to must be a folder"):
        download.download("olist", str(tmp_path / "file"))


# --- Kaggle: stand-in client -----------------------------------------------------------------


class ApiError(Exception):
    def __init__(self, status):
        super().__init__(f"({status}) Reason: Forbidden")
        self.status = status


def fake_kaggle(monkeypatch, files=None, error=None):
    """Installs a stand-in `kaggle` package; returns the list of calls it receives."""
    calls = []

    class KaggleApi:
        def authenticate(self):
            calls.append("authenticate")

        def competition_list_files(self, competition):
            return [types.SimpleNamespace(name=n, total_bytes=len(b)) for n, b in files.items()]

        def competition_download_file(self, competition, name, path, quiet):
            calls.append(name)
            if error:
                raise error
            base = os.path.basename(name)
            if name.endswith("batch_1.parquet"):  # the client delivers some files zipped
                with zipfile.ZipFile(os.path.join(path, base + ".zip"), "w") as z:
                    z.writestr(base, files[name])
            else:
                with open(os.path.join(path, base), "wb") as f:
                    f.write(files[name])

        def dataset_download_files(self, dataset, path, unzip, quiet):
            calls.append(dataset)
            if error:
                raise error
            for name in kaggle_data.OLIST_FILES:
                with open(os.path.join(path, name), "w") as f:
                    f.write("a,b\n1,2\n")

    module = types.ModuleType("kaggle.api.kaggle_api_extended")
    module.KaggleApi = KaggleApi
    monkeypatch.setitem(sys.modules, "kaggle", types.ModuleType("kaggle"))
    monkeypatch.setitem(sys.modules, "kaggle.api", types.ModuleType("kaggle.api"))
    monkeypatch.setitem(sys.modules, "kaggle.api.kaggle_api_extended", module)
    monkeypatch.setenv("KAGGLE_USERNAME", "someone")
    monkeypatch.setenv("KAGGLE_KEY", "0" * 32)
    return calls


ICECUBE_FILES = {
    "sensor_geometry.csv": b"sensor_id,x,y,z\n0,1,2,3\n",
    "train_meta.parquet": b"PAR1" + b"m" * 100,
    "train/batch_1.parquet": b"PAR1" + b"b" * 200,
    "train/batch_2.parquet": b"PAR1" + b"c" * 150,
}


def test_kaggle_missing_client_or_credentials_is_one_line(monkeypatch, tmp_path):
    monkeypatch.delenv("KAGGLE_USERNAME", raising=False)
    monkeypatch.delenv("KAGGLE_KEY", raising=False)
    monkeypatch.setenv("KAGGLE_CONFIG_DIR", str(tmp_path / "nowhere"))
    with pytest.raises(download.DownloadError, match="Kaggle credentials not found: create an API"):
        download.download("icecube", str(tmp_path / "ice"))
    monkeypatch.setenv("KAGGLE_USERNAME", "someone")
    monkeypatch.setenv("KAGGLE_KEY", "0" * 32)
    monkeypatch.setitem(sys.modules, "kaggle", None)  # import fails as if not installed
    with pytest.raises(download.DownloadError, match="not installed: pip install kaggle") as e:
        download.download("olist", str(tmp_path / "olist"))
    assert "\n" not in str(e.value)


def test_kaggle_rules_not_accepted_names_the_rules_page(monkeypatch, tmp_path):
    fake_kaggle(monkeypatch, ICECUBE_FILES, error=ApiError(403))
    with pytest.raises(download.DownloadError) as e:
        download.download("icecube", str(tmp_path / "ice"))
    message = str(e.value)
    assert "HTTP 403" in message and "accept the rules" in message
    assert "kaggle.com/competitions/icecube-neutrinos-in-deep-ice/rules" in message


def test_kaggle_icecube_selected_batches_unzipped_and_idempotent(monkeypatch, tmp_path, capsys):
    calls = fake_kaggle(monkeypatch, ICECUBE_FILES)
    to = tmp_path / "ice"
    summary = download.download("icecube", str(to), batches="1-2")
    for name, body in ICECUBE_FILES.items():
        assert (to / name).read_bytes() == body
    assert not (to / "train" / "batch_1.parquet.zip").exists()
    assert summary.bytes_total == sum(map(len, ICECUBE_FILES.values()))
    assert "4 downloaded" in capsys.readouterr().out
    calls.clear()
    again = download.download("icecube", str(to), batches="1-2")
    assert len(again.skipped) == 4 and calls == ["authenticate"]


def test_kaggle_olist_through_client(monkeypatch, tmp_path):
    calls = fake_kaggle(monkeypatch)
    summary = download.download("olist", str(tmp_path / "olist"))
    assert sorted(summary.downloaded) == sorted(kaggle_data.OLIST_FILES)
    assert calls == ["authenticate", "olistbr/brazilian-ecommerce"]
