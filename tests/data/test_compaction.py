"""Compaction of Stream Analytics-shaped hours: each unit reads only its own sensors' files and
row groups; a late file re-compacts the hour and is scored; compaction is idempotent; and the
predictions equal those of the uncompacted read path. On a directory and on Azurite."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import numpy as np
import pyarrow as pa
import pytest

from benchmarks.bench_sa import (
    SA_HOUR,
    encode_sa_file,
    install_models,
    sa_hour_tables,
    sa_sensors,
    write_sa_hour,
)
from fleetscore.compute.local import SequentialBackend
from fleetscore.data import compaction
from fleetscore.data.windows import read_points, windows_folder
from fleetscore.runs.engine import ENGINE
from fleetscore.runs.lifecycle import begin, read_predictions, run_hour
from fleetscore.scoring.planning import make_plan
from fleetscore.scoring.score import score_unit
from fleetscore.storage.counting import CountingStore

N = 300  # 5 compacted row groups; with FILE_SENSORS lowered below, 3 files
HOUR = SA_HOUR


@pytest.fixture
def small_files(monkeypatch):
    """Files of 128 sensors (2 row groups of 64), so a unit's file choice is visible."""
    monkeypatch.setattr(compaction, "FILE_SENSORS", 128)


def _sa_store(store, n=N, **kw):
    sensors = sa_sensors(n)
    write_sa_hour(store, sensors, HOUR, rows_per_file=kw.pop("rows_per_file", 100),
                  minutes=kw.pop("minutes", 10))
    install_models(store, sensors)
    return sensors


def _rows(table: pa.Table) -> list[tuple]:
    return sorted(zip(table["Device"].to_pylist(), table["Tag"].to_pylist(),
                      table["End"].to_pylist(), table["Value"].to_pylist(),
                      table["Count"].to_pylist(), strict=True))


def test_a_unit_reads_only_its_own_files_and_row_groups(store, small_files):
    sensors = _sa_store(store)
    raw = [p for p in store.list(windows_folder(HOUR))]
    assert len(raw) == 30  # 10 minutes x 3 files of <= 100 rows, sensors unsorted
    before = read_points(store, HOUR)
    manifest = compaction.compact_hour(store, HOUR)
    assert [f["sensors"] for f in manifest["files"]] == [128, 128, 44]

    counting = CountingStore(store)
    unit = sensors[130:140]  # inside the second file's first row group
    points = read_points(counting, HOUR, unit)
    assert _rows(points) == [r for r in _rows(before) if (r[0], r[1]) in
                             {(s.device, s.tag) for s in unit}]
    c = counting.counts
    # No raw file is opened; of the compacted files, only the unit's own.
    assert set(c.opened) == {manifest["files"][1]["path"]}
    assert "windows" not in c.bytes_read
    # list the raw folder and the day's day parts folder, get current.json, open, read the
    # footer, read one row group
    assert c.total_requests("windows", "compacted") == 6
    whole = manifest["files"][1]["size"]
    current = len(store.get(compaction.manifest_path(HOUR)))
    assert c.total_bytes("compacted") < whole * 0.75 + current

    # Uncompacted, the same unit reads every byte of every raw file.
    store.delete(compaction.manifest_path(HOUR))
    counting.reset()
    assert _rows(read_points(counting, HOUR, unit)) == _rows(points)
    assert set(counting.counts.opened) == set(raw)


def test_compaction_is_idempotent_and_keyed_by_the_source_files(store):
    _sa_store(store, n=40)
    first = compaction.compact_hour(store, HOUR)
    files = sorted(store.list(compaction.compacted_folder(HOUR)))
    counting = CountingStore(store)
    again = compaction.compact_hour(counting, HOUR)
    assert again["key"] == first["key"] and again["created"] == first["created"]
    assert not any(c.get("put") for c in counting.counts.requests.values())  # nothing written
    assert sorted(store.list(compaction.compacted_folder(HOUR))) == files
    # A file rewritten in place (same name, other content) changes the key.
    path = first["sources"][0]["path"]
    table = sa_hour_tables(sa_sensors(40), HOUR, seed=9, minutes=1)[0]
    store.put(path, encode_sa_file(table))
    assert compaction.compact_hour(store, HOUR)["key"] != first["key"]


def test_an_hour_of_one_file_is_read_as_it_is(store):
    _sa_store(store, n=20, rows_per_file=10_000, minutes=1)
    assert compaction.compact_hour(store, HOUR) is None
    assert not list(store.list("compacted"))


def _late_file(store, sensors):
    """A late file: new windows for two sensors, and a second part of an existing window."""
    end = HOUR.start_ms + 60_000 * 30
    late = pa.table({
        "Device": [sensors[0].device, sensors[1].device, sensors[1].device],
        "Tag": [sensors[0].tag, sensors[1].tag, sensors[1].tag],
        "WindowEnd": pa.array([end * 1000, end * 1000, (HOUR.start_ms + 60_000) * 1000],
                              pa.timestamp("us", tz="UTC")),
        "Value": [1e6, 2e6, 5.0], "Count": pa.array([3, 3, 2], pa.int64()),
        "WindowHour": [f"{HOUR.start:%Y/%m/%d/%H}"] * 3,
    })
    path = f"{windows_folder(HOUR)}/9_late_1.parquet"
    store.put(path, encode_sa_file(late))
    return path


def test_a_late_file_is_read_before_and_after_recompaction_never_twice(store):
    sensors = _sa_store(store, n=40)
    first = compaction.compact_hour(store, HOUR)
    late = _late_file(store, sensors)
    raw_view = read_points(store, HOUR)  # the usable manifest + the uncovered late file
    second = compaction.compact_hour(store, HOUR)
    assert second["key"] != first["key"] and late in {s["path"] for s in second["sources"]}
    assert _rows(read_points(store, HOUR)) == _rows(raw_view)
    # The same as reading every raw file (no compaction): nothing lost, nothing twice.
    store.delete(compaction.manifest_path(HOUR))
    assert _rows(read_points(store, HOUR)) == _rows(raw_view)
    s1 = raw_view.filter(pa.compute.equal(raw_view["Device"], sensors[1].device))
    s1 = s1.filter(pa.compute.equal(s1["Tag"], sensors[1].tag))
    assert 2e6 in s1["Value"].to_pylist()
    assert s1["Count"].to_pylist()[0] > 2  # the first window's counts were added, not replaced


def _now():
    return datetime(2026, 1, 6, tzinfo=UTC)


def test_a_run_compacts_in_begin_and_a_late_file_recompacts_and_is_scored(store):
    sensors = _sa_store(store, n=24)
    now = _now()
    begin(store, HOUR, run_id="r1", now=now, deadline=now + timedelta(hours=1))
    key = compaction.read_manifest(store, HOUR)["key"]
    from fleetscore.runs import locks

    locks.release(store, HOUR, "r1")
    begin(store, HOUR, run_id="r2", now=now, deadline=now + timedelta(hours=1))
    assert compaction.read_manifest(store, HOUR)["key"] == key  # unchanged hour: not redone
    locks.release(store, HOUR, "r2")

    _late_file(store, sensors)
    summary = run_hour(store, HOUR, SequentialBackend(store, ENGINE), unit_size=5,
                       clock=lambda: now)
    assert summary.status in ("succeeded", "partial"), summary
    assert compaction.read_manifest(store, HOUR)["key"] != key
    preds = read_predictions(store, HOUR)
    late_rows = [v for d, t, v in zip(preds["Device"].to_pylist(), preds["Tag"].to_pylist(),
                                      preds["Val"].to_pylist(), strict=True)
                 if (d, t) == (sensors[1].device, sensors[1].tag)]
    assert 2e6 in late_rows


def test_predictions_equal_the_uncompacted_path(store, small_files):
    _sa_store(store)
    plan = make_plan(store, HOUR, unit_size=37)
    raw = {}
    for unit in plan.units:
        raw[unit.id] = score_unit(store, HOUR, unit.sensors, unit_id=unit.id,
                                  out=f"t/raw/{unit.id}.csv")
    compaction.compact_hour(store, HOUR)
    for unit in plan.units:
        done = score_unit(store, HOUR, unit.sensors, unit_id=unit.id, out=f"t/c/{unit.id}.csv")
        assert done.points == raw[unit.id].points and done.scored == raw[unit.id].scored
        assert done.failures == raw[unit.id].failures
        if done.predictions:
            assert store.get(done.predictions) == store.get(raw[unit.id].predictions)
            assert done.predictions_sha256 == raw[unit.id].predictions_sha256


def test_windows_split_across_files_merge_as_the_raw_path_does(store):
    """A window in two raw files (a late part): the compacted value is the raw path's, bit
    for bit, and counts add."""
    sensors = _sa_store(store, n=16)
    _late_file(store, sensors)
    expected = _rows(read_points(store, HOUR))
    compaction.compact_hour(store, HOUR)
    assert _rows(read_points(store, HOUR)) == expected
    assert np.isfinite([r[3] for r in expected]).all()


def test_a_stale_manifest_is_ignored(store):
    sensors = _sa_store(store, n=16)
    manifest = compaction.compact_hour(store, HOUR)
    expected = _rows(read_points(store, HOUR, sensors[:3]))
    gone = manifest["sources"][0]["path"]
    data = store.get(gone)
    store.delete(gone)  # a covered file removed: the compaction no longer stands for the hour
    counting = CountingStore(store)
    read_points(counting, HOUR, sensors[:3])
    assert not any(p.startswith("compacted/") and p.endswith(".parquet")
                   for p in counting.counts.opened)
    store.put(gone, data)
    assert _rows(read_points(store, HOUR, sensors[:3])) == expected
    # A malformed manifest is not an error: the raw files are read.
    store.put(compaction.manifest_path(HOUR), b"{not json")
    assert _rows(read_points(store, HOUR, sensors[:3])) == expected
    assert json.loads(json.dumps(manifest))["format"] == compaction.FORMAT


# --- Blob reads: pyarrow's Azure filesystem where the client maps onto it, else the SDK -----

KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="


@pytest.mark.parametrize("connection, expected", [
    (f"DefaultEndpointsProtocol=https;AccountName=acct;AccountKey={KEY};"
     "EndpointSuffix=core.windows.net",
     {"account_name": "acct", "blob_storage_authority": ".blob.core.windows.net",
      "blob_storage_scheme": "https", "account_key": KEY}),
    ("UseDevelopmentStorage=true",
     {"account_name": "devstoreaccount1", "blob_storage_authority": "127.0.0.1:10000",
      "blob_storage_scheme": "http", "dfs_storage_authority": "127.0.0.1:10000"}),
    ("BlobEndpoint=https://acct.blob.core.windows.net/;SharedAccessSignature=sv=2020&sig=abc",
     {"account_name": "acct", "sas_token": "sv=2020&sig=abc", "account_key": ""}),
])
def test_the_arrow_filesystem_uses_the_clients_account_endpoint_and_credential(connection,
                                                                              expected):
    from azure.storage.blob import ContainerClient

    from fleetscore.storage.blob import _arrow_filesystem

    fs = _arrow_filesystem(ContainerClient.from_connection_string(connection, "box"), "box")
    options = fs.__reduce__()[1][0]
    assert {k: options[k] for k in expected} == expected


def test_an_anonymous_client_keeps_the_sdk_reader():
    from azure.storage.blob import ContainerClient

    from fleetscore.storage.blob import _arrow_filesystem

    assert _arrow_filesystem(ContainerClient("https://acct.blob.core.windows.net", "box"),
                             "box") is None


def test_both_blob_readers_read_the_same_points(blob_store, azurite, small_files):
    from fleetscore.errors import NotFound
    from fleetscore.storage.blob import BlobStore

    sensors = _sa_store(blob_store, n=200)
    compaction.compact_hour(blob_store, HOUR)
    sdk = BlobStore(blob_store.url[len("az://"):], connection_string=azurite.connection_string,
                    arrow_reads=False)
    assert blob_store._arrow is not None and sdk._arrow is None
    for unit in (sensors[:1], sensors[100:160], None):
        assert _rows(read_points(blob_store, HOUR, unit)) == _rows(read_points(sdk, HOUR, unit))
    for store in (blob_store, sdk):
        with pytest.raises(NotFound):
            store.open("windows/none.parquet")
    sdk.close()
