import json

from fleetscore.backends.local import LocalBackend, SequentialBackend
from fleetscore.hours import Hour
from fleetscore.models import model_path
from fleetscore.predictions import read_predictions
from fleetscore.runs import manifest_path, run_window
from fleetscore.sensors import Sensor

H1 = Hour.parse("2024-03-01T01")


def _files(store, hour):
    return {p: store.get(p) for p in store.list(f"predictions/{hour.path}")}


def test_run_writes_manifest_with_counts(trained_store):
    summary = run_window(trained_store, H1, SequentialBackend(trained_store))
    assert summary.status == "succeeded" and summary.exit_code == 0
    manifest = json.loads(trained_store.get(manifest_path(H1)))
    assert manifest["window"] == "2024-03-01T01"
    assert manifest["sensors"] == {"planned": 3, "scored": 3, "failed": 0, "no_data": 0, "no_model": 0}
    assert manifest["anomalies"] == read_predictions(trained_store, H1)["Prediction"].to_numpy().sum()
    assert manifest["version"] and manifest["duration_s"] >= 0 and len(manifest["unit_results"]) == 3


def test_partial_run_names_the_failed_sensor(trained_store):
    trained_store.put(model_path(Sensor("1", "2")), b"broken")
    summary = run_window(trained_store, H1, SequentialBackend(trained_store))
    assert summary.status == "partial" and summary.exit_code == 3
    assert [(f["sensor"], f["kind"]) for f in summary.failures] == [("1/2", "ModelError")]
    assert read_predictions(trained_store, H1).num_rows == 120


def test_rerun_with_other_unit_size_leaves_no_duplicates(trained_store):
    run_window(trained_store, H1, SequentialBackend(trained_store), unit_size=1)
    once = read_predictions(trained_store, H1)
    run_window(trained_store, H1, SequentialBackend(trained_store), unit_size=2)
    assert len(_files(trained_store, H1)) == 2
    assert read_predictions(trained_store, H1).equals(once)


def test_process_pool_writes_exactly_what_the_sequential_backend_writes(trained_store):
    run_window(trained_store, H1, SequentialBackend(trained_store))
    sequential = _files(trained_store, H1)
    backend = LocalBackend(trained_store.url, workers=2)
    try:
        summary = run_window(trained_store, H1, backend)
    finally:
        backend.close()
        backend.close()
    assert summary.status == "succeeded"
    assert _files(trained_store, H1) == sequential


def test_hour_without_anything_planned_succeeds_empty(trained_store):
    summary = run_window(trained_store, Hour.parse("2030-01-01T00"), SequentialBackend(trained_store))
    assert (summary.status, summary.planned, summary.no_data) == ("succeeded", 0, 3)
