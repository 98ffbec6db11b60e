"""Predictions CSV: ``TS,Device,Tag,Val,Prediction,Score`` (the reference's columns first).

The hour's visible files are ``predictions/YYYY/MM/DD/HH/{unit}-{run}.csv`` (and
``kept-{run}.csv``: earlier rows of sensors a rerun could not replace), each written whole and
atomically; the hour's run manifest ``runs/HOUR.json`` lists them with their sha256.

Shadow predictions (challengers scored beside their champions) are
``shadow/YYYY/MM/DD/HH/{unit}.csv``: the same columns plus ``Version``, the challenger
version that made the row. They are never read as the hour's predictions.
"""

from __future__ import annotations

import io
from collections.abc import Iterable, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pcsv
import pyarrow.parquet as pq

from fleetscore.core.hours import Hour
from fleetscore.errors import InputError

COLUMNS = ("TS", "Device", "Tag", "Val", "Prediction", "Score")
TS_FORMAT = "%Y-%m-%d %H:%M:%S"
SCHEMA = pa.schema(
    [("TS", pa.string()), ("Device", pa.string()), ("Tag", pa.string()), ("Val", pa.float64()),
     ("Prediction", pa.int8()), ("Score", pa.float64())]
)


def predictions_folder(hour: Hour) -> str:
    return f"predictions/{hour.path}"


def predictions_path(hour: Hour, unit_id: str) -> str:
    return f"{predictions_folder(hour)}/{unit_id}.csv"


SHADOW_SCHEMA = SCHEMA.append(pa.field("Version", pa.int64()))


def shadow_path(hour: Hour, unit_id: str, fmt: str = "csv") -> str:
    return f"shadow/{hour.path}/{unit_id}.{fmt}"


def predictions_table(
    device: str, tag: str, ends_ms: np.ndarray, values: np.ndarray, labels: np.ndarray,
    scores: np.ndarray | None,
) -> pa.Table:
    return predictions_table_many([(device, tag, ends_ms, values, labels, scores)])


def predictions_table_many(
    rows: list[tuple[str, str, np.ndarray, np.ndarray, np.ndarray, np.ndarray | None]],
) -> pa.Table:
    """One table for many sensors, built with a few array operations (not one per sensor)."""
    if not rows:
        return SCHEMA.empty_table()
    lengths = np.array([len(r[2]) for r in rows])
    owner = pa.array(np.repeat(np.arange(len(rows), dtype=np.int32), lengths))
    return predictions_columns(
        np.concatenate([r[2] for r in rows]),
        pa.array([r[0] for r in rows], pa.string()).take(owner),
        pa.array([r[1] for r in rows], pa.string()).take(owner),
        np.concatenate([r[3] for r in rows]),
        np.concatenate([r[4] for r in rows]),
        np.concatenate([r[5] if r[5] is not None else np.full(len(r[2]), np.nan) for r in rows]),
        np.concatenate([np.full(len(r[2]), r[5] is not None) for r in rows]))


def predictions_columns(ends_ms: np.ndarray, devices, tags, values: np.ndarray,
                        labels: np.ndarray, scores: np.ndarray, has_score: np.ndarray) -> pa.Table:
    """The predictions table from its columns (window ends in ms; a score only where
    ``has_score``)."""
    if len(ends_ms) == 0:
        return SCHEMA.empty_table()
    # The sensors of an hour share their window labels: format each label once.
    # Labels are whole seconds; formatting at "s" keeps the reference's TS without ".000".
    seconds = np.asarray(ends_ms, dtype=np.int64) // 1000
    low, high = int(seconds.min()), int(seconds.max())
    if high - low <= 4 * len(seconds) + 100_000:  # an hour or a span of hours: no sort
        seen = np.zeros(high - low + 1, dtype=bool)
        seen[seconds - low] = True
        labels_s = np.flatnonzero(seen) + low
        where = (np.cumsum(seen) - 1)[seconds - low]
    else:
        labels_s, where = np.unique(seconds, return_inverse=True)
    ts = pc.strftime(pa.array(labels_s, pa.timestamp("s", tz="UTC")), format=TS_FORMAT).take(
        pa.array(where.astype(np.int64)))
    return pa.table(
        [ts, pc.cast(devices, pa.string()), pc.cast(tags, pa.string()),
         pa.array(values, pa.float64()),
         pa.array(np.asarray(labels).astype(np.int8), pa.int8()),
         pa.array(scores, pa.float64(), mask=~np.asarray(has_score, bool))],
        schema=SCHEMA,
    )


FORMATS = ("csv", "parquet")


# Ids are validated to [A-Za-z0-9_.-], so no field ever needs quoting: plain CSV, as the
# reference wrote it. Batches bigger than the writer's default of 1,024 rows: its cost per
# batch is not small (docs/benchmarks.md).
_CSV_OPTIONS = pcsv.WriteOptions(include_header=False, quoting_style="none", batch_size=1 << 16)


def format_of(path: str) -> str:
    return "parquet" if path.endswith(".parquet") else "csv"


def encode(tables: Iterable[pa.Table], fmt: str = "csv") -> bytes:
    """CSV (the reference's format) or Parquet (same columns, for readers that take it)."""
    tables = list(tables)
    table = pa.concat_tables(tables) if tables else SCHEMA.empty_table()
    sink = io.BytesIO()
    if fmt == "parquet":
        # A dictionary for the window labels only (an hour has 60 of them), no statistics
        # and snappy: 0.4x the time of the defaults for 1.12x the bytes (docs/benchmarks.md).
        pq.write_table(table, sink, compression="snappy", use_dictionary=["TS"],
                       write_statistics=False)
        return sink.getvalue()
    sink.write((",".join(table.column_names) + "\n").encode())
    pcsv.write_csv(table, sink, write_options=_CSV_OPTIONS)
    return sink.getvalue()


def encode_split(table: pa.Table, rows: Sequence[int], fmt: str = "csv") -> list[bytes]:
    """``encode`` of consecutive slices of ``table`` (``rows`` rows each; a backfill's hours):
    the same bytes as encoding each slice on its own. CSV is written once and cut at line
    ends (a row is one line: ids and numbers hold no newline)."""
    offsets = np.concatenate(([0], np.cumsum(rows, dtype=np.int64)))
    if fmt == "parquet":
        return [encode([table.slice(a, b - a)], fmt) for a, b in zip(offsets[:-1], offsets[1:],
                                                                   strict=True)]
    sink = io.BytesIO()
    pcsv.write_csv(table, sink, write_options=_CSV_OPTIONS)
    body = sink.getvalue()
    ends = np.flatnonzero(np.frombuffer(body, dtype=np.uint8) == 10) + 1
    if len(ends) != table.num_rows:
        raise AssertionError("a predictions row spans lines")  # pragma: no cover
    cuts = np.concatenate(([0], ends))[offsets]
    header = (",".join(COLUMNS) + "\n").encode()
    return [header + body[a:b] for a, b in zip(cuts[:-1], cuts[1:], strict=True)]


def decode(data: bytes, name: str, schema: pa.Schema = SCHEMA) -> pa.Table:
    """A predictions file (``schema``: SHADOW_SCHEMA for a shadow file)."""
    try:
        if format_of(name) == "parquet":
            return pq.read_table(io.BytesIO(data)).select(schema.names).cast(schema)
        return pcsv.read_csv(
            io.BytesIO(data),
            convert_options=pcsv.ConvertOptions(
                column_types=dict(zip(schema.names, schema.types, strict=True))),
        ).select(schema.names)
    except (pa.ArrowInvalid, KeyError) as exc:
        raise InputError(f"predictions file {name} is unreadable: {exc}") from exc
