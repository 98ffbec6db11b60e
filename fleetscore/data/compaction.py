"""Compaction: an hour's raw window files rewritten once, sorted by sensor, for every unit.

The Stream Analytics job writes an hour as many Parquet files (one a minute or per 10,000
rows), each holding every sensor in emission order. Row-group statistics cannot prune such
files, so without compaction every unit reads the whole hour: with 100 units the hour is read
100 times (docs/benchmarks.md). ``compact_hour`` reads the hour's raw files once, merges them
as a reader would (count-weighted means, ``windows.read_points``) and writes them again under
``compacted/YYYY/MM/DD/HH/``:

- files of ``FILE_SENSORS`` sensors (sorted by Device, Tag), each of row groups of
  ``GROUP_SENSORS`` sensors: a unit (a contiguous run of sorted sensors) opens only the files
  whose sensor range meets its own and reads only the row groups of its own devices, so its
  cost is O(its sensors), whatever the number of units;
- ``current.json``, written last: the key, the source files it covers (names, sizes, versions),
  and each compacted file's first and last sensor, so a unit picks its files without opening
  the others.

The key is a hash of the source files' names, sizes and versions (ETags on Blob storage,
modification times locally). An unchanged hour is not recompacted; a late file (or a changed
one) changes the key and the next compaction rewrites the hour. Until then readers read the
compacted files plus the raw files the manifest does not cover, so a late file's points are
never lost and no window is counted twice (a covered raw file is never read beside its
compacted copy). A manifest that covers a file no longer present is ignored (raw files are
read). Hours of fewer than ``MIN_FILES`` raw files are not compacted: one file (what a local
ingest of one CSV writes, already sorted) is read as it is. Day parts
(``windows/YYYY/MM/DD/day/``, a source's sparse hours of a day: fleetscore/data/windows.py) are not
compacted: they are sorted already, and readers read them beside the compacted files.

``runs.begin`` calls ``compact_for_run`` once per run, under the hour's lock, so two
compactions of an hour never race. The compacted files of the previous manifest are kept (a
straggler unit of an earlier run may still read them); older ones are deleted.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Sequence
from datetime import UTC, datetime

import pyarrow as pa
import pyarrow.parquet as pq

from fleetscore.core.hours import Hour
from fleetscore.data.compacted import (  # noqa: F401 - the compacted hour's names, also compaction's
    FORMAT,
    MIN_FILES,
    compacted_folder,
    files_for,
    manifest_path,
    read_manifest,
    usable_manifest,
)
from fleetscore.data.windows import PART_SCHEMA, read_raw_points, windows_folder
from fleetscore.errors import InputError
from fleetscore.storage import Store

log = logging.getLogger(__name__)

GROUP_SENSORS = 64  # sensors per row group: a unit reads at most one partial group at each end
FILE_SENSORS = 1024  # sensors per compacted file (16 row groups; a small footer per file)


def list_sources(store: Store, hour: Hour) -> list[tuple[str, int | None, str | None]]:
    """The hour's raw window files with their sizes and versions, where the store can say."""
    folder = windows_folder(hour)
    return sorted(r for r in store.list_info(folder) if r[0].endswith(".parquet"))


def source_key(sources: Sequence[tuple[str, int | None, str | None]], store: Store) -> str:
    digest = hashlib.sha256(f"fleetscore-compaction-{FORMAT}\n".encode())
    for path, size, version in sources:
        if size is None and version is None:  # a store that cannot stat: hash the content
            version = hashlib.sha256(store.get(path)).hexdigest()
        digest.update(f"{path}\0{size}\0{version}\n".encode())
    return digest.hexdigest()[:24]


def compact_hour(store: Store, hour: Hour, *, min_files: int = MIN_FILES) -> dict | None:
    """Compact the hour when its raw files changed since the last compaction; return the
    manifest in force (None: the hour has fewer than ``min_files`` raw files)."""
    sources = list_sources(store, hour)
    if len(sources) < min_files:
        return None
    key = source_key(sources, store)
    previous = read_manifest(store, hour)
    if previous is not None and previous.get("key") == key:
        return previous
    points = read_raw_points(store, hour, [p for p, _, _ in sources])
    folder = compacted_folder(hour)
    files = []
    if points.num_rows:
        devices = points["Device"].to_numpy(zero_copy_only=False)
        tags = points["Tag"].to_numpy(zero_copy_only=False)
        change = (devices[1:] != devices[:-1]) | (tags[1:] != tags[:-1])
        starts = [0, *(i + 1 for i in change.nonzero()[0].tolist())]
        bounds = [*starts, points.num_rows]  # row where each sensor starts, then the end
        n_sensors = len(starts)
        table = pa.table(
            [points["Device"], points["Tag"],
             points["End"].cast(pa.timestamp("ms", tz="UTC")), points["Value"], points["Count"]],
            schema=PART_SCHEMA)
        for index, first in enumerate(range(0, n_sensors, FILE_SENSORS)):
            last = min(first + FILE_SENSORS, n_sensors)
            path = f"{folder}/{key}-{index:05d}.parquet"
            data = _encode(table, [bounds[i] for i in range(first, last, GROUP_SENSORS)]
                           + [bounds[last]])
            store.put(path, data)
            a, b = bounds[first], bounds[last] - 1
            files.append({"path": path, "first": f"{devices[a]}/{tags[a]}",
                          "last": f"{devices[b]}/{tags[b]}", "sensors": last - first,
                          "rows": bounds[last] - bounds[first], "size": len(data),
                          # the footer, its length and the magic: what a reader reads first
                          "tail": int.from_bytes(data[-8:-4], "little") + 8})
    manifest = {
        "format": FORMAT, "window": str(hour), "key": key,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "sources": [{"path": p, "size": s, "version": v} for p, s, v in sources],
        "rows": points.num_rows, "files": files,
        "group_sensors": GROUP_SENSORS, "file_sensors": FILE_SENSORS,
    }
    # Written last: a manifest means every file it lists exists.
    store.put(manifest_path(hour), json.dumps(manifest, indent=1).encode())
    keep = {f["path"] for f in files} | {manifest_path(hour)}
    if previous is not None:
        keep |= {f["path"] for f in previous.get("files", ())}
    for path in store.list(folder):
        if path not in keep:
            store.delete(path)
    return manifest


def _encode(table: pa.Table, cuts: list[int]) -> bytes:
    """Rows cuts[0]..cuts[-1] of ``table``, one row group between each two cuts."""
    sink = pa.BufferOutputStream()
    with pq.ParquetWriter(sink, table.schema, compression="zstd") as writer:
        for lo, hi in zip(cuts[:-1], cuts[1:], strict=True):
            writer.write_table(table.slice(lo, hi - lo), row_group_size=hi - lo)
    return sink.getvalue().to_pybytes()


def compact_for_run(store: Store, hour: Hour) -> dict | None:
    """What ``runs.begin`` calls: compact, and when the raw files cannot be read leave the
    hour uncompacted (its units then read the raw files and report what is wrong, as before)."""
    try:
        return compact_hour(store, hour)
    except InputError as exc:
        log.warning("hour %s left uncompacted: %s", hour, exc)
        return None
