"""``fleetscore verify`` (fleetscore/runs/verify.py): what it names, and what it must not."""

from __future__ import annotations

from fleetscore.runs.verify import verify


def test_window_files_stream_analytics_wrote_are_not_named_but_an_unrecorded_part_is(
        trained_store):
    """In the cloud, Stream Analytics writes window files its events record without naming
    a file; only ingest's own parts (``part-<source>.parquet``) have a record naming them."""
    part = next(p for p in trained_store.list("windows") if p.endswith(".parquet"))
    data = trained_store.get(part)
    trained_store.put("windows/2024/03/01/05/0_6f1c2e_1.parquet", data)  # as Stream Analytics
    assert verify(trained_store)[1] == []
    trained_store.put("windows/2024/03/01/05/part-lost.parquet", data)
    assert [p.path for p in verify(trained_store)[1]] == [
        "windows/2024/03/01/05/part-lost.parquet"]


def test_a_predictions_file_the_hours_manifest_does_not_list_is_named(trained_store):
    """Left by a run stopped between promoting and its manifest: verify names it, and a
    forced rerun of the hour sweeps it."""
    from fleetscore.compute.local import SequentialBackend
    from fleetscore.core.hours import Hour
    from fleetscore.runs.engine import ENGINE
    from fleetscore.runs.lifecycle import read_manifest, run_hour

    hour = Hour.parse("2024-03-01T01")
    run_hour(trained_store, hour, SequentialBackend(trained_store, ENGINE))
    listed = read_manifest(trained_store, hour).predictions[0]
    stray = listed.path.rsplit("/", 1)[0] + "/u000000-20250101000000abcdef.csv"
    trained_store.put(stray, trained_store.get(listed.path))
    assert [p.path for p in verify(trained_store)[1]] == [stray]
    run_hour(trained_store, hour, SequentialBackend(trained_store, ENGINE))
    assert not trained_store.exists(stray) and verify(trained_store)[1] == []
