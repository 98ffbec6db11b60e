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
