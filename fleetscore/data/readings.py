"""Raw readings CSV (``TS,Device,Tag,Value``, TS in UTC): streaming, validating reader.

The file is read in blocks of whole lines. A block is parsed by pyarrow in one go; only a
block that pyarrow refuses (a bad timestamp, a non-number, a short row, bad UTF-8) is parsed
again line by line in Python, so bad rows are named by their line number while good data keeps
the fast path. Memory stays bounded by the block size, whatever the file size.
"""

from __future__ import annotations

import csv
import io
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pcsv

from fleetscore.core.sensors import ID_PATTERN, is_valid_id
from fleetscore.errors import InputError

HEADER = ("TS", "Device", "Tag", "Value")
HEADER_TEXT = ",".join(HEADER)
BLOCK_BYTES = 8 << 20
MAX_LINE_BYTES = 4096  # a reading is about 40 bytes; anything this long is not one
_ID_REGEX = rf"^{ID_PATTERN}$"
READINGS_SCHEMA = pa.schema(
    [("Device", pa.string()), ("Tag", pa.string()), ("TS", pa.int64()), ("Value", pa.float64())]
)


@dataclass(frozen=True)
class Reject:
    line: int
    reason: str
    text: str


def check_header(path: str | os.PathLike[str]) -> int:
    """Validate the file's header; return the byte offset of the first data line."""
    try:
        with open(path, "rb") as handle:
            first = handle.readline(64 * 1024)
    except FileNotFoundError as exc:
        raise InputError(f"{path}: no such file") from exc
    except IsADirectoryError as exc:
        raise InputError(f"{path}: is a directory, expected a readings CSV file") from exc
    except OSError as exc:
        raise InputError(f"{path}: cannot read: {exc.strerror}") from exc
    if not first.strip():
        raise InputError(f"{path}: the file is empty; expected the header {HEADER_TEXT}")
    text = first.decode("utf-8-sig", errors="replace").strip()
    fields = tuple(field.strip().strip('"') for field in text.split(","))
    if fields != HEADER:
        raise InputError(
            f"{path}: wrong header {text[:100]!r}; expected {HEADER_TEXT} "
            "(TS in UTC, e.g. 2018-08-28 23:00:05.000)"
        )
    return len(first)


def iter_readings(
    path: str | os.PathLike[str], *, block_bytes: int = BLOCK_BYTES,
    progress: Callable[[int, int], None] | None = None,
) -> Iterator[tuple[pa.Table, list[Reject]]]:
    """Yield (valid readings table, rejects) per block. Columns: READINGS_SCHEMA.
    ``progress(bytes read, file size)`` is called after each block."""
    offset = check_header(path)
    size = os.path.getsize(path)
    for first_line, block, too_long in _blocks(path, offset, block_bytes, progress, size):
        table, rejects = _parse_block(block, first_line) if block else (READINGS_SCHEMA.empty_table(), [])
        if too_long:
            rejects = sorted(rejects + too_long, key=lambda r: r.line)
        yield table, rejects


def _blocks(path, offset: int, block_bytes: int, progress=None,
            size: int = 0) -> Iterator[tuple[int, bytes, list[Reject]]]:
    """Blocks of whole lines with the file line number of each block's first line.

    A line longer than MAX_LINE_BYTES is never held whole: once the bytes since the last
    newline pass the cap, they are dropped up to the next newline and the line is rejected by
    its number, so memory stays bounded by the block size and the cap, whatever the file."""
    line = 2
    carry = b""
    skipping: Reject | None = None  # the over-long line being skipped
    skipped = 0
    with open(path, "rb") as handle:
        handle.seek(offset)
        while True:
            chunk = handle.read(block_bytes)
            if not chunk:
                break
            if progress:
                progress(handle.tell(), size)
            if skipping is not None:
                cut = chunk.find(b"\n")
                if cut < 0:
                    skipped += len(chunk)
                    continue
                skipped += cut
                yield line, b"", [_too_long(skipping, skipped)]
                line += 1
                skipping, chunk = None, chunk[cut + 1:]
            data = carry + chunk
            cut = data.rfind(b"\n")
            if cut < 0:
                carry = data
            else:
                block, carry = data[: cut + 1], data[cut + 1 :]
                yield line, block, []
                line += block.count(b"\n")
            if len(carry) > MAX_LINE_BYTES:
                skipping = Reject(line, "", carry[:200].decode("utf-8", errors="replace"))
                skipped, carry = len(carry), b""
    if skipping is not None:
        yield line, b"", [_too_long(skipping, skipped)]
    elif carry.strip():
        yield line, carry + b"\n", []


def _too_long(head: Reject, length: int) -> Reject:
    return Reject(head.line, f"line of {length:,} bytes is longer than a reading can be "
                             f"({MAX_LINE_BYTES:,})", head.text)


def _parse_block(block: bytes, first_line: int) -> tuple[pa.Table, list[Reject]]:
    try:
        table, lines, rejects = _parse_fast(block, first_line)
    except (pa.ArrowInvalid, pa.ArrowTypeError, _Mismatch):
        table, lines, rejects = _parse_slow(block, first_line)
    return _drop_duplicates(table, lines, rejects)


_KEY = ["Device", "Tag", "TS"]


def _drop_duplicates(table: pa.Table, lines: np.ndarray,
                     rejects: list[Reject]) -> tuple[pa.Table, list[Reject]]:
    """One reading per (Device, Tag, TS): a repeat counts once and is named, as a duplicate
    (the same Value) or a conflict (another Value: the first line's is kept).

    Repeats are found within a block (8 MiB of consecutive lines), where a replayed or
    double-written reading lands in practice."""
    if table.num_rows < 2:
        return table, rejects
    keyed = table.append_column("_line", pa.array(lines, pa.int64()))
    groups = keyed.group_by(_KEY, use_threads=False).aggregate([("_line", "min")])
    if groups.num_rows == table.num_rows:
        return table, rejects
    keep = np.isin(lines, groups["_line_min"].to_numpy())
    first = keyed.filter(pa.array(keep)).select([*_KEY, "Value", "_line"]).rename_columns(
        [*_KEY, "_first_value", "_first_line"])
    repeats = keyed.filter(pa.array(~keep)).join(first, _KEY)
    named = [Reject(int(line), f"duplicate of line {at}" if value == was else
                    f"conflicts with line {at}: another Value for the same TS, Device and Tag "
                    f"(line {at}'s is kept)", "")
             for line, at, value, was in zip(
                 repeats["_line"].to_pylist(), repeats["_first_line"].to_pylist(),
                 repeats["Value"].to_pylist(), repeats["_first_value"].to_pylist(), strict=True)]
    return table.filter(pa.array(keep)), sorted(rejects + named, key=lambda r: r.line)


class _Mismatch(Exception):
    """The fast parse did not keep one row per line (blank lines): line numbers would drift."""


def _parse_fast(block: bytes, first_line: int) -> tuple[pa.Table, np.ndarray, list[Reject]]:
    table = pcsv.read_csv(
        io.BytesIO(block),
        read_options=pcsv.ReadOptions(column_names=list(HEADER), use_threads=False),
        convert_options=pcsv.ConvertOptions(
            column_types={name: pa.string() for name in HEADER}, strings_can_be_null=False
        ),
    )
    if table.num_rows != block.count(b"\n"):
        raise _Mismatch
    ts = _ceil_ms(pc.cast(pc.cast(table["TS"], pa.timestamp("ns")), pa.int64()))
    value = pc.cast(table["Value"], pa.float64())
    device, tag = table["Device"], table["Tag"]
    good = pc.and_(
        pc.and_(valid_ids(device), valid_ids(tag)),
        pc.and_(pc.is_finite(value), pc.is_valid(ts)),
    )
    good_np = good.to_numpy(zero_copy_only=False)
    out = pa.table([device, tag, ts, value], schema=READINGS_SCHEMA)
    line_numbers = np.arange(first_line, first_line + table.num_rows, dtype=np.int64)
    if good_np.all():
        return out, line_numbers, []
    lines = block.split(b"\n")
    rejects = [_check_line(lines[i], first_line + i) for i in np.flatnonzero(~good_np)]
    return out.filter(good), line_numbers[good_np], [r for r in rejects if r is not None]


def valid_ids(column: pa.ChunkedArray) -> pa.ChunkedArray:
    shaped = pc.match_substring_regex(column, _ID_REGEX)
    reserved = pc.is_in(column, value_set=pa.array([".", ".."]))
    return pc.and_(shaped, pc.invert(reserved))


def _parse_slow(block: bytes, first_line: int) -> tuple[pa.Table, np.ndarray, list[Reject]]:
    numbers: list[int] = []
    devices: list[str] = []
    tags: list[str] = []
    stamps: list[int] = []
    values: list[float] = []
    rejects: list[Reject] = []
    for i, raw in enumerate(block.split(b"\n")[:-1]):
        line_no = first_line + i
        if not raw.strip():
            continue  # a blank line carries no reading and is not worth a reject
        parsed = _parse_line(raw, line_no)
        if isinstance(parsed, Reject):
            rejects.append(parsed)
            continue
        ts_ms, device, tag, value = parsed
        numbers.append(line_no)
        devices.append(device)
        tags.append(tag)
        stamps.append(ts_ms)
        values.append(value)
    table = pa.table(
        [
            pa.array(devices, pa.string()),
            pa.array(tags, pa.string()),
            pa.array(stamps, pa.int64()),
            pa.array(values, pa.float64()),
        ],
        schema=READINGS_SCHEMA,
    )
    return table, np.array(numbers, dtype=np.int64), rejects


def _check_line(raw: bytes, line_no: int) -> Reject | None:
    parsed = _parse_line(raw, line_no)
    return parsed if isinstance(parsed, Reject) else None


def _parse_line(raw: bytes, line_no: int) -> Reject | tuple[int, str, str, float]:
    shown = raw[:200].decode("utf-8", errors="replace").rstrip("\r")
    if len(raw) > MAX_LINE_BYTES:
        return Reject(line_no, f"line of {len(raw):,} bytes is longer than a reading can be "
                               f"({MAX_LINE_BYTES:,})", shown)
    try:
        text = raw.decode("utf-8").rstrip("\r")
    except UnicodeDecodeError:
        return Reject(line_no, "not valid UTF-8", shown)
    try:
        fields = next(csv.reader([text]))
    except (csv.Error, StopIteration):
        return Reject(line_no, "not a CSV row", shown)
    if len(fields) != len(HEADER):
        return Reject(line_no, f"expected 4 fields (TS,Device,Tag,Value), got {len(fields)}", shown)
    ts_text, device, tag, value_text = fields
    ts_ms = parse_ts(ts_text)
    if ts_ms is None:
        return Reject(line_no, f"bad TS {ts_text[:40]!r}: expected e.g. 2018-08-28 23:00:05.000", shown)
    if not is_valid_id(device):
        return Reject(line_no, f"invalid Device {device[:40]!r}", shown)
    if not is_valid_id(tag):
        return Reject(line_no, f"invalid Tag {tag[:40]!r}", shown)
    try:
        value = float(value_text)
    except ValueError:
        return Reject(line_no, f"Value {value_text[:40]!r} is not a number", shown)
    if not np.isfinite(value):
        return Reject(line_no, f"Value {value_text[:40]!r} is not finite", shown)
    return ts_ms, device, tag, value


def _ceil_ms(ns: pa.ChunkedArray) -> pa.Array:
    """Nanoseconds to whole milliseconds, rounded *up*: windows are (end - I, end], so a
    reading a fraction of a millisecond after a window's end belongs to the next window."""
    values = ns.to_numpy(zero_copy_only=False) if isinstance(ns, pa.ChunkedArray) else ns.to_numpy()
    return pa.array(-((-values) // 1_000_000), pa.int64())


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def parse_ts(text: str) -> int | None:
    """Milliseconds since the epoch, UTC, rounded up (see _ceil_ms); an explicit offset is
    converted to UTC."""
    try:
        moment = datetime.fromisoformat(text.strip())
    except ValueError:
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    micros = (moment - _EPOCH) // timedelta(microseconds=1)  # exact integer arithmetic
    return -((-micros) // 1000)
