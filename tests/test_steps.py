"""The orchestration's steps, as the activities call them."""

from datetime import UTC, datetime

from fleetscore.hours import Hour
from fleetscore.runs import read_manifest
from fleetscore.sensors import Sensor
from fleetscore.steps import finalize_step, plan_step, status_step, submit_step

H1 = Hour.parse("2024-03-01T01")
T0 = datetime(2024, 3, 1, 2, 5, tzinfo=UTC)


def test_plan_step_returns_ids_not_sensor_lists(trained_store):
    plan = plan_step(trained_store, H1)
    assert plan["units"] == ["u000000", "u000001", "u000002"] and plan["sensors"] == 3
    assert plan["plan"] == "runs/2024-03-01T01/plan.json" and plan["run_id"]
    assert all(isinstance(u, str) for u in plan["units"])


def test_subset_rerun_reuses_the_units_of_the_stored_plan(trained_store):
    plan_step(trained_store, H1, unit_size=2)
    again = plan_step(trained_store, H1, sensors=[Sensor("dev_a", "t.x"), Sensor("7", "7")])
    assert again["units"] == ["u000001"]
    assert again["not_planned"] == ["7/7"]


def test_local_units_are_scored_in_submit_and_read_back_by_status(trained_store):
    plan_step(trained_store, H1)
    outcome = submit_step(trained_store, H1, ["u000000"], None)["u000000"]
    assert outcome["state"] == "succeeded" and outcome["scored"] == 1
    states = status_step(trained_store, H1, ["u000000", "u000001"], None)
    assert states["u000000"]["state"] == "succeeded"
    assert (states["u000001"]["state"], states["u000001"]["error_kind"]) == ("failed", "ResultMissing")


def test_finalize_names_units_that_failed_or_never_ran(trained_store):
    plan_step(trained_store, H1)
    submit_step(trained_store, H1, ["u000000"], None)
    outcomes = {"u000000": {"unit": "u000000", "state": "succeeded"},
                "u000001": {"unit": "u000001", "state": "failed", "error_kind": "SubmitFailed",
                            "error": "submit failed after retries: boom"}}
    summary = finalize_step(trained_store, H1, outcomes, started=T0, duration_s=1.0, backend="local")
    assert (summary["status"], summary["scored"], summary["failed"]) == ("partial", 1, 2)
    kinds = {f["sensor"]: f["kind"] for f in read_manifest(trained_store, H1)["failures"]}
    assert kinds == {"1/2": "SubmitFailed", "dev_a/t.x": "NotRun"}


def test_plan_step_forgets_results_of_the_units_it_will_rerun(trained_store):
    plan_step(trained_store, H1)
    submit_step(trained_store, H1, ["u000000"], None)
    plan_step(trained_store, H1)
    states = status_step(trained_store, H1, ["u000000"], None)
    assert states["u000000"]["state"] == "failed"  # no stale result stands in for the new run
