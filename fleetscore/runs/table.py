"""Every hour of a range and how its run went: what `fleetscore runs` and the report show.

An hour is either run (its manifest's status: succeeded, partial, failed, no_data) or
``never_run``; hours with data that were never run are the ones an operator must see.

A backfill leaves tens of thousands of run manifests, so they are read the way
``runs.list_manifests`` reads them (every ``runs/*.json``, in window order, malformed ones
skipped) but in bulk: the files are fetched together (a thread pool on Blob storage, plain
reads on a directory), and only the fields a summary needs are parsed, all manifests in one
pyarrow JSON pass (a per-file ``json.loads`` only if one of them is unusual).
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.json as pjson

from fleetscore.core.hours import Hour
from fleetscore.data.arrivals import hours_with_arrivals
from fleetscore.model.bank import newest_champion_time
from fleetscore.runs.lifecycle import manifest_paths
from fleetscore.storage import Store
from fleetscore.storage.base import get_many

STATUSES = ("succeeded", "partial", "failed", "no_data", "never_run", "damaged")
_HOUR_PATTERN = r"^\d{4}-\d{2}-\d{2}T\d{2}$"
_HOUR_RE = re.compile(_HOUR_PATTERN)
_COUNTS = ("planned", "scored", "failed", "no_data", "no_model")
# What a summary reads of a manifest; every other field is skipped unparsed.
MANIFEST_FIELDS = pa.schema([
    ("window", pa.string()),
    ("status", pa.string()),
    ("run_id", pa.string()),
    ("finished", pa.string()),
    ("started_at", pa.string()),
    ("duration_s", pa.float64()),
    ("anomalies", pa.int64()),
    ("sensors", pa.struct([(k, pa.int64()) for k in _COUNTS])),
    ("failures", pa.list_(pa.struct([("sensor", pa.string()), ("kind", pa.string()),
                                     ("message", pa.string())]))),
    ("predictions", pa.list_(pa.struct([("path", pa.string())]))),
    # The runaway guard's noisy sensors (fleetscore/alerts/noisy.py): their names suffice.
    ("noisy", pa.list_(pa.struct([("sensor", pa.string())]))),
])


@dataclass(frozen=True)
class HourRow:
    window: str
    status: str
    has_data: bool
    scored: int | None = None
    failed: int | None = None
    anomalies: int | None = None
    finished: str | None = None
    run_id: str | None = None
    # Scored (in part) by a champion no longer current: a sensor's champion changed after the
    # run began (None: no run). A range rerun without --force reruns exactly these.
    stale: bool | None = None
    # The sensors the runaway guard marked noisy this hour (None: no run, or a manifest of an
    # earlier version, which had no guard).
    noisy: tuple[str, ...] | None = None

    def to_json(self) -> dict:
        return asdict(self)


def scored_before(started_at: str | None, newest_champion: str | None) -> bool:
    """A run that began before the newest champion took its place scored some sensor with a
    champion that is no longer current (a run's ``started_at`` and a champion's time are both
    ISO UTC with microseconds, so they compare as text)."""
    return newest_champion is not None and (started_at or "") <= newest_champion


def hour_rows(store: Store, *, first: Hour | None = None, last: Hour | None = None) -> list[HourRow]:
    """One row per hour from ``first`` to ``last`` (default: the hours with data or a run)."""
    newest = newest_champion_time(store)
    data = {h.index for h in hours_with_arrivals(store)}
    # Both ends given: only the manifests of the range are read.
    runs = read_runs(store, first=first, last=last) if first and last else read_runs(store)
    run_hours = runs["hour"].to_numpy()
    known = sorted(data | set(run_hours.tolist()))
    lo = first.index if first is not None else (known[0] if known else None)
    hi = last.index if last is not None else (known[-1] if known else None)
    if lo is None or hi is None:
        return []
    runs = between(runs, Hour(lo), Hour(hi))
    columns = {name: runs[name].to_pylist() for name in
               ("status", "scored", "failed", "anomalies", "finished", "run_id", "started_at",
                "noisy")}
    at = {h: i for i, h in enumerate(runs["hour"].to_pylist())}
    damaged = set(damaged_hours(store, set(at)))
    rows = []
    for index, window in zip(range(lo, hi + 1), window_names(lo, hi), strict=True):
        i = at.get(index)
        if i is None:
            rows.append(HourRow(window, "damaged" if index in damaged else "never_run",
                                index in data))
            continue
        rows.append(HourRow(window, columns["status"][i] or "failed", index in data,
                            scored=columns["scored"][i], failed=columns["failed"][i],
                            anomalies=columns["anomalies"][i], finished=columns["finished"][i],
                            run_id=columns["run_id"][i], noisy=_names(columns["noisy"][i]),
                            stale=columns["status"][i] in ("succeeded", "partial")
                            and scored_before(columns["started_at"][i], newest)))
    return rows


def _names(noisy: list[dict] | None) -> tuple[str, ...] | None:
    return None if noisy is None else tuple(n["sensor"] for n in noisy if n["sensor"])


def damaged_hours(store: Store, readable: set[int]) -> list[int]:
    """Hours whose manifest ``runs/HOUR.json`` is there but could not be read (``readable``:
    the hours whose manifest was)."""
    out = []
    for path in manifest_paths(store):
        name = path[len("runs/"):-len(".json")]
        if _HOUR_RE.fullmatch(name):
            try:
                index = Hour.parse(name).index
            except Exception:  # noqa: BLE001 - not an hour's name
                continue
            if index not in readable:
                out.append(index)
    return out


def window_names(first: int, last: int) -> list[str]:
    """``str(Hour(i))`` for every hour index from ``first`` to ``last``, formatted at once."""
    seconds = pa.array(np.arange(first, last + 1, dtype=np.int64) * 3600, pa.timestamp("s"))
    return pc.strftime(seconds, format="%Y-%m-%dT%H").to_pylist()


# --- the manifests, in bulk -----------------------------------------------------------------


def read_runs(store: Store, *, first: Hour | None = None, last: Hour | None = None) -> pa.Table:
    """One row per run hour, in hour order: the manifests' summary fields, flattened
    (``window``, ``hour`` (index), ``status``, ``run_id``, ``finished``, ``duration_s``,
    ``anomalies``, ``planned`` .. ``no_model``, ``failures``, ``predictions``; null where a
    manifest lacks the field). Manifests without a valid window are left out; of two with the
    same window, the later file wins, as ``runs.list_manifests`` orders them.

    With ``first``/``last``, manifests named for hours outside them (``runs/HOUR.json``, as
    runs write them) are not read at all."""
    paths = manifest_paths(store)
    if first is None and last is None:
        return summarize(_parse_manifests(get_many(store, paths)))
    lo = first.index if first is not None else -(2**62)
    hi = last.index if last is not None else 2**62
    paths = [p for p in paths if _named_inside(p, lo, hi)]
    return between(summarize(_parse_manifests(get_many(store, paths))), first, last)


def between(runs: pa.Table, first: Hour | None, last: Hour | None) -> pa.Table:
    """The runs of the hours from ``first`` to ``last`` (either end open when None)."""
    hour = runs["hour"].to_numpy()
    inside = np.ones(len(hour), dtype=bool)
    if first is not None:
        inside &= hour >= first.index
    if last is not None:
        inside &= hour <= last.index
    return runs if inside.all() else runs.filter(pa.array(inside))


def no_runs() -> pa.Table:
    """``read_runs`` of a store without runs: the columns, no rows."""
    return summarize(_parse_manifests([]))


def summarize(table: pa.Table) -> pa.Table:
    """Parsed manifests (``MANIFEST_FIELDS``) as ``read_runs`` returns them."""
    window = table["window"]
    valid = pc.and_kleene(pc.match_substring_regex(window, _HOUR_PATTERN),
                          pc.is_valid(pc.strptime(window, format="%Y-%m-%dT%H", unit="s",
                                                  error_is_null=True)))
    table = table.filter(pc.fill_null(valid, False))
    seconds = pc.cast(pc.strptime(table["window"], format="%Y-%m-%dT%H", unit="s"), pa.int64())
    hour = seconds.to_numpy(zero_copy_only=False).astype(np.int64) // 3600
    # Window order, later files last (a stable sort), then the last file of each window.
    order = np.argsort(hour, kind="stable")
    hour = hour[order]
    last_of = np.append(hour[1:] != hour[:-1], True) if len(hour) else np.zeros(0, bool)
    keep = order[last_of]
    table = table.take(pa.array(keep, pa.int64()))
    sensors = table["sensors"].combine_chunks() if table.num_rows else None
    columns = {
        "window": table["window"], "hour": pa.array(hour[last_of], pa.int64()),
        "status": table["status"], "run_id": table["run_id"], "finished": table["finished"],
        "started_at": table["started_at"], "duration_s": table["duration_s"], "anomalies": table["anomalies"],
        **{k: (sensors.field(k) if sensors is not None else pa.array([], pa.int64()))
           for k in _COUNTS},
        "failures": table["failures"], "predictions": table["predictions"],
        "noisy": table["noisy"],
    }
    return pa.table(columns)


def _named_inside(path: str, lo: int, hi: int) -> bool:
    name = path[len("runs/"):-len(".json")]
    if not _HOUR_RE.fullmatch(name):
        return True  # not named for an hour: read it, its window decides
    try:
        index = Hour.parse(name).index
    except Exception:  # noqa: BLE001 - a name like 2024-13-40T99: its window decides
        return True
    return lo <= index <= hi


def _parse_manifests(datas: Sequence[bytes]) -> pa.Table:
    """The manifests' summary fields, one row per file that parses (``MANIFEST_FIELDS``)."""
    # JSON strings hold no raw line breaks, so a manifest on one line is the same JSON:
    # one line each, and the lot is one newline-delimited document.
    lines = [d.translate(_ONE_LINE) for d in datas if d.strip()]
    if lines:
        try:
            table = pjson.read_json(
                pa.py_buffer(b"\n".join(lines)),
                read_options=pjson.ReadOptions(block_size=max(1 << 20, max(map(len, lines)) + 2)),
                parse_options=pjson.ParseOptions(explicit_schema=MANIFEST_FIELDS,
                                                 unexpected_field_behavior="ignore"))
            if table.num_rows == len(lines):  # else a file held more than one value
                return table.select(MANIFEST_FIELDS.names).cast(MANIFEST_FIELDS)
        except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError):
            pass  # a manifest that is malformed or not as written: read them one by one
    rows = [r for r in map(_fields_of, datas) if r is not None]
    return pa.Table.from_pylist(rows, schema=MANIFEST_FIELDS)


_ONE_LINE = bytes.maketrans(b"\r\n", b"  ")


def _fields_of(data: bytes) -> dict | None:
    """The summary fields of one manifest, each null unless of the expected type."""
    try:
        m = json.loads(data)
    except ValueError:
        return None  # as runs.list_manifests: a malformed manifest is skipped
    if not isinstance(m, dict):
        return None

    def text(value):
        return value if isinstance(value, str) else None

    def integer(value):
        if isinstance(value, bool) or not isinstance(value, int | float):
            return None
        return int(value) if float(value).is_integer() and abs(value) < 2**63 else None

    def number(value):
        return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None

    sensors = m.get("sensors")
    failures = m.get("failures")
    predictions = m.get("predictions")
    noisy = m.get("noisy")
    return {
        "window": text(m.get("window")), "status": text(m.get("status")),
        "run_id": text(m.get("run_id")), "finished": text(m.get("finished")),
        "started_at": text(m.get("started_at")), "duration_s": number(m.get("duration_s")),
        "anomalies": integer(m.get("anomalies")),
        "sensors": ({k: integer(sensors.get(k)) for k in _COUNTS}
                    if isinstance(sensors, dict) else None),
        "failures": ([{k: text(f.get(k)) for k in ("sensor", "kind", "message")}
                      for f in failures if isinstance(f, dict)]
                     if isinstance(failures, list) else None),
        "predictions": ([{"path": text(p.get("path"))} for p in predictions
                         if isinstance(p, dict)] if isinstance(predictions, list) else None),
        "noisy": ([{"sensor": text(n.get("sensor"))} for n in noisy if isinstance(n, dict)]
                  if isinstance(noisy, list) else None),
    }
