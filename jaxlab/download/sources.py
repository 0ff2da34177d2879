"""Where each dataset lives over plain HTTP(S), turned into `fetch.Remote` lists.

- HRRR: NOAA's AWS Open Data bucket `noaa-hrrr-bdp-pds`. Each GRIB2 file has a `.idx` sidecar
  (one line per message: `number:byte_offset:d=YYYYMMDDHH:SHORTNAME:LEVEL:FORECAST:`); the byte
  range of a message runs from its offset to the next message's offset minus one. Only the seven
  fields the weather task reads are fetched (about 7 of ~170 messages); concatenated GRIB2
  messages are a valid GRIB2 file. Cycles run 0-48 h (00/06/12/18z) or 0-18 h (the others);
  the archive has gaps, so a file without an index, or an index without every field, is
  returned as missing (path, why) rather than raised.
- Gravity Spy: per version a Zenodo record and exact file names (v1d1: 1476551, v1d0: 1476156);
  the record's JSON (`<api>/records/<id>`) lists every file with its size and md5 checksum.
- GreenEarthNet: the S3-compatible store the earthnet toolkit downloads from (bucket `earthnet`,
  prefix `earthnet2021x/<track>/`); an anonymous ListObjectsV2 request gives keys, sizes and ETags
  (the md5 of objects uploaded in one part; multipart "<hex>-<n>" ETags are not used).

Every base URL can be changed by argument or environment variable (tests serve fixture files from
127.0.0.1). Talking to the real services is unverified here (no internet where this was written).
"""

from __future__ import annotations

import concurrent.futures
import datetime as dt
import json
import os
import re
import time
import urllib.parse
import xml.etree.ElementTree as ET

from jaxlab.download import fetch, report

HRRR_URL = "https://noaa-hrrr-bdp-pds.s3.amazonaws.com"
HRRR_LONG_FORECAST_H = 48  # the 00/06/12/18z cycles (HRRR v4, since December 2020)
HRRR_SHORT_FORECAST_H = 18  # every other cycle
ZENODO_URL = "https://zenodo.org/api"
# Gravity Spy training set versions: (Zenodo record, h5, metadata CSV, PNG tarball). The glitch
# config reads v1d1's names; v1d0 is the earlier release (docs/data.md gives the sources).
GRAVITYSPY_VERSIONS = {
    "v1d1": ("1476551", "trainingsetv1d1.h5", "trainingset_v1d1_metadata.csv",
             "trainingsetv1d1.tar.gz"),
    "v1d0": ("1476156", "trainingsetv1d0.h5", "trainingset_v1d0_metadata.csv",
             "trainingsetv1d0.tar.gz"),
}  # fmt: skip
GRAVITYSPY_VERSION = "v1d1"
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


def select_ranges(rows, fields) -> tuple[list[tuple[int, int | None]], list[str]]:
    """The byte ranges of `fields` ((SHORTNAME, LEVEL) pairs), in file order, and the fields the
    index lacks ("NAME:LEVEL"); a field listed twice keeps its first message. The level must
    match exactly: HRRR also has CAPE/CIN over pressure layers ("90-0 mb above ground", ...)."""
    chosen, lacking = [], []
    for name, level in fields:
        hits = [(start, end) for start, n, lv, end in rows if n == name and lv == level]
        if hits:
            chosen.append(hits[0])
        else:
            lacking.append(f"{name}:{level}")
    return sorted(set(chosen)), lacking


def hrrr_path(day: dt.date, init_hour: int, forecast_hour: int) -> str:
    return f"hrrr.{day:%Y%m%d}/conus/hrrr.t{init_hour:02d}z.wrfsfcf{forecast_hour:02d}.grib2"


def hrrr_max_forecast_hour(init_hour: int) -> int:
    """HRRR v4's forecast length: 48 h from the 00/06/12/18z cycles, 18 h from the others."""
    return HRRR_LONG_FORECAST_H if init_hour % 6 == 0 else HRRR_SHORT_FORECAST_H


def fields_variant(fields) -> str:
    """The field list as the manifest records it ("NAME:LEVEL;..."): a change refetches."""
    return ";".join(f"{name}:{level}" for name, level in fields)


def _hrrr_remote(rel: str, base: str, fields, options: fetch.Options):
    """The field subset of one file, or (rel, why) when the archive lacks it or some field."""
    url = f"{base}/{rel}"
    try:
        text = fetch.get_bytes(url + ".idx", options).decode("utf-8", "replace")
    except fetch.NotFoundError:
        return rel, "not in the archive (no .idx, HTTP 404)"
    ranges, lacking = select_ranges(parse_idx(text, url + ".idx"), fields)
    if lacking:
        return rel, f"incomplete: the index has no {', '.join(lacking)}"
    if ranges[-1][1] is None:  # the last message of the file: its end is the file's size
        try:
            ranges[-1] = (ranges[-1][0], fetch.content_length(url, options) - 1)
        except fetch.NotFoundError:
            return rel, "not in the archive (an .idx without its GRIB2 file, HTTP 404)"
    merged: list[list[int]] = []
    for start, end in ranges:  # adjacent messages in one request
        if merged and merged[-1][1] + 1 == start:
            merged[-1][1] = end
        else:
            merged.append([start, end])
    size = sum(end - start + 1 for start, end in merged)
    return fetch.Remote(
        rel,
        url,
        size=size,
        ranges=tuple(map(tuple, merged)),
        kind="grib2",
        variant=fields_variant(fields),
    )


def hrrr_requests(start, end, init_hours, forecast_hours):
    """[(day, init hour, forecast hour)] to fetch and the count of (init, forecast) pairs no
    cycle produces (forecast hour past that cycle's length), which are left out with a note.
    A request of nothing but such pairs is an error."""
    first, last = parse_date(start), parse_date(end or start)
    if last < first:
        raise ValueError(f"hrrr: end date {last} is before start date {first}.")
    inits, leads = int_list(init_hours, "init_hours"), int_list(forecast_hours, "forecast_hours")
    if not inits or min(inits) < 0 or max(inits) > 23:
        raise ValueError(f"hrrr: init_hours must lie in 0..23, got {inits}.")
    if not leads or min(leads) < 0 or max(leads) > HRRR_LONG_FORECAST_H:
        raise ValueError(
            f"hrrr: forecast_hours must lie in 0..{HRRR_LONG_FORECAST_H}, got {leads}."
        )
    pairs = [(h, f) for h in inits for f in leads if f <= hrrr_max_forecast_hour(h)]
    if not pairs:
        raise ValueError(
            f"hrrr: no cycle in init_hours {inits} runs to forecast hours {leads}: the "
            f"00/06/12/18z cycles run 0-{HRRR_LONG_FORECAST_H} h, the others "
            f"0-{HRRR_SHORT_FORECAST_H} h."
        )
    days = [first + dt.timedelta(days=i) for i in range((last - first).days + 1)]
    dropped = len(inits) * len(leads) - len(pairs)
    return [(d, h, f) for d in days for h, f in pairs], dropped


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
) -> tuple[list[fetch.Remote], list[tuple[str, str]], int]:
    """The field subsets of every (day, init hour, forecast hour), the files the archive lacks
    or has without all `fields` ((path, why), to list as gaps) and the number requested.

    Files the manifest records as complete with the same fields are not looked up again (a
    rerun needs no index requests); a changed field list looks them up and fetches them again.
    """
    base = base_url(url, "JAXLAB_HRRR_URL", HRRR_URL)
    wanted, dropped = hrrr_requests(start, end, init_hours, forecast_hours)
    if dropped:
        report.say(
            f"hrrr: {dropped} (init hour, forecast hour) pairs a day left out: the cycles other "
            f"than 00/06/12/18z run only to {HRRR_SHORT_FORECAST_H} h."
        )
    paths = [hrrr_path(d, h, f) for d, h, f in wanted]
    variant = fields_variant(fields)
    directory = os.path.abspath(to)
    manifest = fetch.load_manifest(directory)
    remotes: dict[str, fetch.Remote] = {}
    missing: list[tuple[str, str]] = []
    lookups = []
    for rel in paths:
        entry = manifest.get(rel, {})
        if fetch.is_recorded(directory, rel, manifest) and entry.get("variant") == variant:
            remotes[rel] = fetch.Remote(
                rel, entry["url"], size=entry["size"], md5=entry["md5"], variant=variant
            )
        else:
            lookups.append(rel)
    report.say(f"hrrr: reading {len(lookups)} index files ({len(remotes)} files already complete).")
    last_note = time.monotonic()
    with concurrent.futures.ThreadPoolExecutor(max(1, workers)) as pool:
        results = pool.map(lambda r: _hrrr_remote(r, base, fields, options), lookups)
        for count, result in enumerate(results, 1):
            if isinstance(result, fetch.Remote):
                remotes[result.path] = result
            else:
                missing.append(result)
            if time.monotonic() - last_note >= 10.0:  # thousands of lookups take minutes
                last_note = time.monotonic()
                report.say(f"hrrr: {count} / {len(lookups)} index files read.")
    return [remotes[rel] for rel in paths if rel in remotes], missing, len(paths)


# --- Gravity Spy (Zenodo) --------------------------------------------------------------------


def zenodo_files(record: dict, api: str, record_id: str) -> list[dict]:
    """[{key, size, md5, url}] from a Zenodo record JSON.

    Current records (InvenioRDM): `files` is a list of {key, size, checksum: "md5:<hex>",
    links: {self: .../files/<key>/content}} (some API versions wrap it as {"entries": {key:
    {...}}}). Legacy and deposit records: {filename, filesize, checksum: "<hex>" (md5), links:
    {download | self}}. Links are used as given (a link that names a file without /content gets
    it added); URLs are percent-encoded when requested.
    """
    files = record.get("files")
    if isinstance(files, dict):  # {"entries": {key: {...}}} in some API versions
        files = list(files.get("entries", {}).values())
    if not isinstance(files, list) or not files:
        raise fetch.DownloadError(f"{api}/records/{record_id}: the record lists no files.")
    out = []
    for item in files:
        key = item.get("key") or item.get("filename")
        if not key:
            raise fetch.DownloadError(
                f"{api}/records/{record_id}: a file entry has neither 'key' nor 'filename': "
                f"{sorted(item)}."
            )
        checksum = item.get("checksum") or ""
        algo, _, digest = checksum.rpartition(":")
        if not algo and re.fullmatch(r"[0-9a-fA-F]{32}", digest):
            algo = "md5"  # legacy records give the bare md5
        links = item.get("links", {})
        quoted = urllib.parse.quote(key)
        url = (
            links.get("content")
            or links.get("download")
            or links.get("self")
            or f"{api}/records/{record_id}/files/{quoted}"
        )
        # The bytes: a bare InvenioRDM file link (…/api/records/<id>/files/<key>) gets /content.
        if re.search(r"/api/records/[^/]+/files/[^/]+$", url):
            url += "/content"
        size = item.get("size", item.get("filesize"))
        out.append(
            {
                "key": key,
                "size": None if size is None else int(size),
                "md5": digest.lower() if algo == "md5" else None,
                "url": url,
            }
        )
    return out


def gravityspy_remotes(
    *,
    version: str = GRAVITYSPY_VERSION,
    pngs: bool = False,
    record: str | None = None,
    url: str | None = None,
    options: fetch.Options,
) -> list[fetch.Remote]:
    """The version's h5 and metadata CSV (and its PNG tarball with `pngs`), picked from the
    Zenodo record by exact name, with Zenodo's md5 sums. `record` overrides the version's
    record (another Zenodo version of the same files)."""
    if version not in GRAVITYSPY_VERSIONS:
        raise ValueError(
            f"gravityspy: unknown version {version!r}; choose {' or '.join(GRAVITYSPY_VERSIONS)}."
        )
    default_record, h5, metadata, tarball = GRAVITYSPY_VERSIONS[version]
    record = str(record or default_record)
    api = base_url(url, "JAXLAB_ZENODO_URL", ZENODO_URL)
    listing = json.loads(fetch.get_bytes(f"{api}/records/{record}", options))
    files = {f["key"]: f for f in zenodo_files(listing, api, record)}
    names = [h5, metadata] + ([tarball] if pngs else [])
    lacking = [n for n in names if n not in files]
    if lacking:
        raise fetch.DownloadError(
            f"{api}/records/{record}: no {', '.join(lacking)} among the record's files "
            f"({', '.join(sorted(files))}); check version= (v1d1 or v1d0) and record=."
        )
    return [
        fetch.Remote(n, files[n]["url"], size=files[n]["size"], md5=files[n]["md5"]) for n in names
    ]


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
            # A single-part upload's ETag is its md5; a multipart one is "<hex>-<parts>" (the
            # md5 of the parts' md5s), not a checksum of the content, and is not used.
            etag = (text(item, "ETag") or "").replace("&quot;", "").strip('"')
            out.append(
                {
                    "key": text(item, "Key"),
                    "size": int(text(item, "Size")),
                    "md5": etag.lower() if re.fullmatch(r"[0-9a-fA-F]{32}", etag) else None,
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
