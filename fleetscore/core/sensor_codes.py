"""Sensors as integers for sorting and grouping columns of readings or windows: comparing
two string columns row by row is most of the cost of sorting millions of rows by sensor."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc


class SensorCodes(NamedTuple):
    """Each row's sensor as one integer, in the order of (Device, Tag) compared as strings:
    sorting by ``codes`` sorts as by the two string columns, in a fraction of the time
    (14.8 million readings: 21 s by the strings, 6 s by codes and the rest)."""

    codes: np.ndarray  # int64, a row's sensor
    devices: pa.Array  # the distinct devices, sorted: a code's device is devices[code // tags]
    tags: pa.Array  # the distinct tags, sorted: its tag is tags[code % len(tags)]

    def device_tag(self, codes: np.ndarray) -> tuple[pa.Array, pa.Array]:
        """The Device and Tag columns of sensors given by their codes."""
        n = len(self.tags)
        return self.devices.take(pa.array(codes // n)), self.tags.take(pa.array(codes % n))


def key_positions(ids: pa.Array, keys: pa.Array) -> np.ndarray:
    """Where each ``Device/Tag`` key is in ``ids`` (the entries of a bank, its forests or its
    trees), -1 for keys not there."""
    if not len(ids):
        return np.full(len(keys), -1, dtype=np.int64)
    found: np.ndarray = pc.fill_null(pc.index_in(keys, value_set=ids), -1).to_numpy()
    return found.astype(np.int64)


def sensor_keys(devices: Any, tags: Any) -> pa.Array:
    """Each row's sensor as its ``Device/Tag`` key (``str(Sensor)``), one array. The columns
    are arrays, or anything ``pa.array`` takes (lists, numpy arrays of str)."""
    keys = pc.binary_join_element_wise(_strings(devices), _strings(tags), "/")
    return keys.combine_chunks() if isinstance(keys, pa.ChunkedArray) else keys


def _strings(column: Any) -> pa.Array | pa.ChunkedArray:
    return column if isinstance(column, pa.Array | pa.ChunkedArray) else pa.array(column,
                                                                                pa.string())


def sensor_codes(devices: pa.Array | pa.ChunkedArray,
                 tags: pa.Array | pa.ChunkedArray) -> SensorCodes:
    """The rows' ``SensorCodes``. Every id must be there (readings are validated as read)."""
    if devices.null_count or tags.null_count:
        raise ValueError("a sensor without a Device or a Tag has no code")
    device_rank, sorted_devices = _ranks(devices)
    tag_rank, sorted_tags = _ranks(tags)
    return SensorCodes(device_rank * len(sorted_tags) + tag_rank, sorted_devices, sorted_tags)


def _ranks(column: pa.Array | pa.ChunkedArray) -> tuple[np.ndarray, pa.Array]:
    """Each row's rank among the column's distinct values (sorted as pyarrow sorts strings),
    and those values, sorted."""
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks()
    encoded = pc.dictionary_encode(column)
    order = pc.sort_indices(encoded.dictionary).to_numpy()
    rank = np.empty(len(order), dtype=np.int64)
    rank[order] = np.arange(len(order), dtype=np.int64)
    return rank[encoded.indices.to_numpy()], encoded.dictionary.take(pa.array(order))


def sort_by_sensor(table: pa.Table, then: Sequence[str], first: np.ndarray | None = None, *,
                   codes: SensorCodes | None = None) -> pa.Array:
    """Indices that sort the rows by ``first`` (when given), Device, Tag, then the ``then``
    columns, all ascending. Stable: rows equal in all of them keep their order. A table with
    a missing id (a raw file read whole) sorts by the strings, which put nulls last.
    ``codes``: the table's own, when the caller has them already."""
    columns: dict[str, pa.Array | pa.ChunkedArray | np.ndarray] = {}
    if first is not None:
        columns["_first"] = first
    if codes is None and (table["Device"].null_count or table["Tag"].null_count):
        columns["_device"], columns["_tag"] = table["Device"], table["Tag"]
    else:
        columns["_sensor"] = (codes or sensor_codes(table["Device"], table["Tag"])).codes
    for i, name in enumerate(then):
        columns[f"_then{i}"] = table[name]
    return pc.sort_indices(pa.table(columns), sort_keys=[(k, "ascending") for k in columns])
