"""Where each dataset lives over plain HTTP(S), turned into `fetch.Remote` lists.

- HRRR: NOAA's AWS Open Data bucket `noaa-hrrr-bdp-pds`. Each GRIB2 file has a `.idx` sidecar
  (one line per message: `number:byte_offset:d=YYYYMMDDHH:SHORTNAME:LEVEL:FORECAST:`); the byte
  range of a message runs from its offset to the next message's offset minus one. Only the seven
  fields the weather task reads are fetched (about 7 of ~170 messages); concatenated GRIB2
  messages are a valid GRIB2 file.
- Gravity Spy: the Zenodo record's JSON (`<api>/records/<id>`) lists every file with its size and
  md5 checksum.
- GreenEarthNet: the S3-compatible store the earthnet toolkit downloads from (bucket `earthnet`,
  prefix `earthnet2021x/<track>/`); an anonymous ListObjectsV2 request gives keys, sizes and ETags
  (the md5 of objects uploaded in one part).

Every base URL can be changed by argument or environment variable (tests serve fixture files from
127.0.0.1). Talking to the real services is unverified here (no internet where this was written).
"""

from __future__ import annotations

import concurrent.futures
import datetime as dt
import json
import os
import re
import urllib.parse
import xml.etree.ElementTree as ET

from jaxlab.download import fetch, report

HRRR_URL = "https://noaa-hrrr-bdp-pds.s3.amazonaws.com"
ZENODO_URL = "https://zenodo.org/api"
GRAVITYSPY_RECORD = "1476156"
GREENEARTHNET_URL = "https://s3.bgc-jena.mpg.de:9000/earthnet"
GREENEARTHNET_PREFIX = "earthnet2021x"
GREENEARTHNET_TRACKS = (
    "train",
    "val_chopped",
    "iid_chopped",
    "ood-t_chopped",
    "ood-s_chopped",
    "ood-st_chopped",
)
# The seven weather fields as the `.idx` names them: (SHORTNAME, LEVEL).
HRRR_FIELDS = (
    ("REFC", "entire atmosphere"),
    ("TMP", "2 m above ground"),
    ("DPT", "2 m above ground"),
    ("UGRD", "10 m above ground"),
    ("VGRD", "10 m above ground"),
    ("CAPE", "surface"),
    ("CIN", "surface"),
)


def base_url(given: str | None, env: str, default: str) -> str:
    return (given or os.environ.get(env) or default).rstrip("/")


# --- HRRR ------------------------------------------------------------------------------------


def int_list(value, name: str) -> tuple[int, ...]:
    """0 / "0,6,12" / "0-23" / [0, 6] -> sorted unique ints."""
    if isinstance(value, int):
        return (value,)
    if isinstance(value, str):
        out = []
        for part in filter(None, (p.strip() for p in value.split(","))):
            m = re.fullmatch(r"(\d+)(?:-(\d+))?", part)
            if not m:
                raise ValueError(f"{name}: {value!r} is not a list like '0,6,12' or '0-23'.")
            lo, hi = int(m.group(1)), int(m.group(2) or m.group(1))
            out.extend(range(lo, hi + 1))
        value = out
    return tuple(sorted({int(v) for v in value}))


def parse_date(value) -> dt.date:
    if isinstance(value, dt.date):
        return value
    text = str(value).replace("-", "")
    try:
        return dt.datetime.strptime(text, "%Y%m%d").date()
    except ValueError:
        raise ValueError(f"date {value!r}: expected YYYY-MM-DD or YYYYMMDD.") from None


def parse_idx(text: str, url: str) -> list[tuple[int, str, str, int | None]]:
    """`.idx` text -> [(offset, SHORTNAME, LEVEL, end_or_None)], end inclusive, None = to EOF."""
    rows = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        parts = line.split(":")
        if len(parts) < 6 or not parts[1].isdigit():
            raise fetch.DownloadError(f"{url}: line {number} is not an index line: {line!r}.")
        rows.append((int(parts[1]), parts[3], parts[4]))
    offsets = sorted({offset for offset, _, _ in rows})
    next_offset = dict(zip(offsets, offsets[1:] + [None], strict=True))
    return [
        (offset, name, level, None if next_offset[offset] is None else next_offset[offset] - 1)
        for offset, name, level in rows
    ]


def select_ranges(rows, fields, url: str) -> list[tuple[int, int | None]]:
    """The byte ranges of `fields` ((SHORTNAME, LEVEL) pairs), in file order; a missing field is
    an error naming the index, a field listed twice keeps its first message."""
    chosen = []
    for name, level in fields:
        hits = [(start, end) for start, n, lv, end in rows if n == name and lv == level]
        if not hits:
            raise fetch.DownloadError(f"{url}: no message {name}:{level} in the index.")
        chosen.append(hits[0])
    return sorted(set(chosen))


def hrrr_path(day: dt.date, init_hour: int, forecast_hour: int) -> str:
    return f"hrrr.{day:%Y%m%d}/conus/hrrr.t{init_hour:02d}z.wrfsfcf{forecast_hour:02d}.grib2"


def _hrrr_remote(rel: str, base: str, fields, options: fetch.Options) -> fetch.Remote:
    url = f"{base}/{rel}"
    text = fetch.get_bytes(url + ".idx", options).decode("utf-8", "replace")
    ranges = select_ranges(parse_idx(text, url + ".idx"), fields, url + ".idx")
    if ranges[-1][1] is None:  # the last message of the file: its end is the file's size
        ranges[-1] = (ranges[-1][0], fetch.content_length(url, options) - 1)
    merged: list[list[int]] = []
    for start, end in ranges:  # adjacent messages in one request
        if merged and merged[-1][1] + 1 == start:
            merged[-1][1] = end
        else:
            merged.append([start, end])
    size = sum(end - start + 1 for start, end in merged)
    return fetch.Remote(rel, url, size=size, ranges=tuple(map(tuple, merged)), kind="grib2")


def hrrr_remotes(
    to: str,
    *,
    start,
    end=None,
    init_hours=0,
    forecast_hours=0,
    fields=HRRR_FIELDS,
    url: str | None = None,
    options: fetch.Options,
    workers: int = 8,
):
    """The field subsets of every (day, init hour, forecast hour); files the manifest records as
    complete are not looked up again (a rerun needs no index requests)."""
    base = base_url(url, "JAXLAB_HRRR_URL", HRRR_URL)
    first, last = parse_date(start), parse_date(end or start)
    if last < first:
        raise ValueError(f"hrrr: end date {last} is before start date {first}.")
    inits, leads = int_list(init_hours, "init_hours"), int_list(forecast_hours, "forecast_hours")
    if not inits or min(inits) < 0 or max(inits) > 23:
        raise ValueError(f"hrrr: init_hours must lie in 0..23, got {inits}.")
    if not leads or min(leads) < 0 or max(leads) > 48:
        raise ValueError(f"hrrr: forecast_hours must lie in 0..48, got {leads}.")
    days = [first + dt.timedelta(days=i) for i in range((last - first).days + 1)]
    paths = [hrrr_path(d, h, f) for d in days for h in inits for f in leads]
    manifest = fetch.load_manifest(os.path.abspath(to))
    remotes: dict[str, fetch.Remote] = {}
    lookups = []
    for rel in paths:
        if fetch.is_recorded(os.path.abspath(to), rel, manifest):
            entry = manifest[rel]
            remotes[rel] = fetch.Remote(rel, entry["url"], size=entry["size"], md5=entry["md5"])
        else:
            lookups.append(rel)
    report.say(f"hrrr: reading {len(lookups)} index files ({len(remotes)} files already complete).")
    with concurrent.futures.ThreadPoolExecutor(max(1, workers)) as pool:
        for rel, remote in zip(
            lookups,
            pool.map(lambda r: _hrrr_remote(r, base, fields, options), lookups),
            strict=True,
        ):
            remotes[rel] = remote
    return [remotes[rel] for rel in paths]


# --- Gravity Spy (Zenodo) --------------------------------------------------------------------


def zenodo_files(record: dict, api: str, record_id: str) -> list[dict]:
    """[{key, size, md5, url}] from a Zenodo record JSON (legacy and InvenioRDM shapes)."""
    files = record.get("files")
    if isinstance(files, dict):  # {"entries": {key: {...}}} in some API versions
        files = list(files.get("entries", {}).values())
    if not isinstance(files, list) or not files:
        raise fetch.DownloadError(f"{api}/records/{record_id}: the record lists no files.")
    out = []
    for item in files:
        key = item.get("key") or item.get("filename")
        checksum = item.get("checksum", "")
        algo, _, digest = checksum.partition(":")
        links = item.get("links", {})
        quoted = urllib.parse.quote(key)
        # The bytes: `content` where given; a bare InvenioRDM file link gets its /content suffix.
        url = (
            links.get("content") or links.get("self") or f"{api}/records/{record_id}/files/{quoted}"
        )
        if re.search(r"/api/records/[^/]+/files/[^/]+$", url):
            url += "/content"
        out.append(
            {
                "key": key,
                "size": int(item["size"]) if "size" in item else item.get("filesize"),
                "md5": digest if algo == "md5" else None,
                "url": url,
            }
        )
    return out


def gravityspy_remotes(
    *,
    pngs: bool = False,
    record: str = GRAVITYSPY_RECORD,
    url: str | None = None,
    options: fetch.Options,
) -> list[fetch.Remote]:
    """The h5 and the metadata CSV (and the PNG tarball with `pngs`), with Zenodo's md5 sums."""
    api = base_url(url, "JAXLAB_ZENODO_URL", ZENODO_URL)
    listing = json.loads(fetch.get_bytes(f"{api}/records/{record}", options))
    files = zenodo_files(listing, api, record)
    wanted = [("HDF5 training set", r"\.h5$"), ("metadata CSV", r"metadata.*\.csv$")]
    if pngs:
        wanted.append(("PNG archive", r"\.tar\.gz$|\.tgz$"))
    remotes = []
    for what, pattern in wanted:
        hits = [f for f in files if re.search(pattern, f["key"])]
        if not hits:
            keys = ", ".join(f["key"] for f in files)
            raise fetch.DownloadError(
                f"{api}/records/{record}: no {what} among the record's files ({keys})."
            )
        for f in hits:
            remotes.append(fetch.Remote(f["key"], f["url"], size=f["size"], md5=f["md5"]))
    return remotes


# --- GreenEarthNet (S3-compatible listing) ---------------------------------------------------


def s3_list(bucket_url: str, prefix: str, options: fetch.Options) -> list[dict]:
    """Anonymous ListObjectsV2 (path style), following continuation tokens."""
    out, token = [], None
    while True:
        query = {"list-type": "2", "prefix": prefix}
        if token:
            query["continuation-token"] = token
        url = f"{bucket_url}?{urllib.parse.urlencode(query)}"
        root = ET.fromstring(fetch.get_bytes(url, options))
        ns = {"s3": root.tag.split("}")[0].strip("{")} if root.tag.startswith("{") else {}

        def text(node, tag, ns=ns):
            found = node.find(f"s3:{tag}" if ns else tag, ns)
            return None if found is None else found.text

        for item in root.findall("s3:Contents" if ns else "Contents", ns):
            etag = (text(item, "ETag") or "").strip('"')
            out.append(
                {
                    "key": text(item, "Key"),
                    "size": int(text(item, "Size")),
                    "md5": etag if re.fullmatch(r"[0-9a-fA-F]{32}", etag) else None,
                }
            )
        token = text(root, "NextContinuationToken")
        if text(root, "IsTruncated") != "true" or not token:
            return out


def greenearthnet_remotes(
    *,
    tracks=("train",),
    limit: int | None = None,
    url: str | None = None,
    etag_md5: bool = True,
    options: fetch.Options,
) -> list[fetch.Remote]:
    """Minicubes `<track>/<region>/<cube>.nc` of the chosen tracks (the first `limit` per track)."""
    if isinstance(tracks, str):
        tracks = [t.strip() for t in tracks.split(",") if t.strip()]
    if "all" in tracks:
        tracks = GREENEARTHNET_TRACKS
    unknown = [t for t in tracks if t not in GREENEARTHNET_TRACKS]
    if unknown or not tracks:
        raise ValueError(
            f"greenearthnet: unknown track(s) {unknown}; choose from {list(GREENEARTHNET_TRACKS)}"
            " or 'all'."
        )
    bucket = base_url(url, "JAXLAB_GREENEARTHNET_URL", GREENEARTHNET_URL)
    prefix = os.environ.get("JAXLAB_GREENEARTHNET_PREFIX", GREENEARTHNET_PREFIX).strip("/")
    remotes = []
    for track in tracks:
        objects = [
            o for o in s3_list(bucket, f"{prefix}/{track}/", options) if o["key"].endswith(".nc")
        ]
        if not objects:
            raise fetch.DownloadError(f"{bucket}: no minicubes under {prefix}/{track}/.")
        objects.sort(key=lambda o: o["key"])
        for o in objects[:limit]:
            rel = o["key"][len(prefix) + 1 :]
            md5 = o["md5"] if etag_md5 else None
            object_url = f"{bucket}/{urllib.parse.quote(o['key'])}"
            remotes.append(fetch.Remote(rel, object_url, size=o["size"], md5=md5))
    return remotes
