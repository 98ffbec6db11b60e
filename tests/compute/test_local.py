"""Local backends against both stores: the process pool's workers open their own store."""

from __future__ import annotations

import pytest

from fleetscore.compute import load_backend
from fleetscore.compute.base import ComputeBackend
from fleetscore.core.hours import Hour
from fleetscore.data.ingest import ingest_file
from fleetscore.errors import UsageError
from fleetscore.model.training import train
from fleetscore.runs.engine import ENGINE
from fleetscore.runs.lifecycle import read_manifest, read_predictions, run_hour
from fleetscore.settings import Settings

H1 = Hour.parse("2024-03-01T01")


@pytest.mark.parametrize("name", ["local", "sequential"])
def test_whole_pipeline_on_every_store_and_backend(store, fleet_csv, azurite, name):
    settings = Settings(storage_connection_string=azurite.connection_string)
    ingest_file(store, fleet_csv)
    train(store, until=Hour.parse("2024-03-01T00"))
    backend = load_backend(name, store, store_spec=store.url, settings=settings, workers=2, engine=ENGINE)
    assert isinstance(backend, ComputeBackend)
    try:
        summary = run_hour(store, H1, backend)
    finally:
        backend.close()
    assert (summary.status, summary.scored) == ("succeeded", 3), summary.failures
    assert read_predictions(store, H1).num_rows == 180
    assert read_manifest(store, H1).backend == name


def test_unknown_backend_is_a_usage_error(local_store):
    with pytest.raises(UsageError, match="unknown backend 'warp'"):
        load_backend("warp", local_store, store_spec=local_store.url, settings=Settings(), engine=ENGINE)
