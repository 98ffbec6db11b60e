"""Alerts on the Functions path: the real activities driven by the Durable driver on Azurite
raise the hour's alert when finalize closes it and deliver it after, once; a rerun and a
concurrent CLI close of the same hour raise nothing new."""

from __future__ import annotations

from datetime import datetime

from fleetscore.alerts.records import all_records, apply_rules
from fleetscore.compute.local import SequentialBackend
from fleetscore.core.hours import Hour
from fleetscore.data.ingest import ingest_file
from fleetscore.model.training import train
from fleetscore.runs.engine import ENGINE
from fleetscore.runs.lifecycle import read_manifest, run_hour
from tests.alerts.test_alerts_run import RULES, _fleet
from tests.functions.durable_driver import drive

WINDOW = "2024-03-01T01"


def test_the_durable_path_raises_and_delivers_an_alert_once(
        orchestrator_functions, app_functions, functions_env, tmp_path, webhook):
    store = functions_env.store()
    ingest_file(store, _fleet(tmp_path))
    train(store, estimator="ocsvm", until=Hour.parse("2024-03-01T00"))
    apply_rules(store, RULES.format(url=webhook.url, timeout="2s"), "rules.toml")
    activities = {name: app_functions[name].get_user_function()
                  for name in ("plan_window", "submit_units", "unit_status",
                               "finalize_window")}
    replay = drive(orchestrator_functions, "score_window",
                   functions_env.settings().orchestration_input(WINDOW), activities)
    assert replay.output["status"] == "succeeded"
    assert read_manifest(store, Hour.parse(WINDOW)).alerts == (
        "sustained|A|2024-03-01 01:21:00",)
    assert [(p["device"], p["tags"]) for p in webhook.posts] == [("A", ["temp"])]

    # A forced rerun through the orchestrator, then one from the CLI's loop: same key.
    drive(orchestrator_functions, "score_window",
          functions_env.settings().orchestration_input(WINDOW, force=True), activities,
          start=datetime.fromisoformat("2024-03-01T03:00:00+00:00"))
    run_hour(store, Hour.parse(WINDOW), SequentialBackend(store, ENGINE))
    assert read_manifest(store, Hour.parse(WINDOW)).alerts == ()
    assert len(webhook.posts) == 1
    assert [r.state for r in all_records(store)] == ["sent"]


def test_the_durable_path_applies_the_error_threshold(
        orchestrator_functions, app_functions, functions_env, tmp_path, monkeypatch):
    from fleetscore.core.sensors import Sensor
    from fleetscore.model.registry import model_path
    from fleetscore.runs.lifecycle import read_predictions

    store = functions_env.store()
    ingest_file(store, _fleet(tmp_path))
    train(store, estimator="ocsvm", until=Hour.parse("2024-03-01T00"))
    activities = {name: app_functions[name].get_user_function()
                  for name in ("plan_window", "submit_units", "unit_status", "finalize_window")}
    first = drive(orchestrator_functions, "score_window",
                  functions_env.settings().orchestration_input(WINDOW), activities)
    assert first.output["status"] == "succeeded"
    before = read_predictions(store, Hour.parse(WINDOW))
    store.put(model_path(Sensor("C", "temp")), b"not a model")
    monkeypatch.setenv("FLEETSCORE_MAX_FAILED_PERCENT", "10")
    functions_env.reset()
    store = functions_env.store()
    again = drive(orchestrator_functions, "score_window",
                  functions_env.settings().orchestration_input(WINDOW, force=True), activities,
                  start=datetime.fromisoformat("2024-03-01T03:00:00+00:00"))
    manifest = read_manifest(store, Hour.parse(WINDOW))
    assert again.output["status"] == manifest.status == "failed"
    assert manifest.reason.startswith("1 of 4 sensors failed")
    assert read_predictions(store, Hour.parse(WINDOW)).equals(before)
