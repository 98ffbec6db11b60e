"""record_arrivals with real func.EventHubEvent batches, against an Azurite-backed store."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import azure.functions as func
import pytest

from fleetscore.core.hours import Hour
from fleetscore.core.sensors import Sensor
from fleetscore.data.arrivals import read_arrivals
from fleetscore.scoring.planning import make_plan

H = Hour.parse("2024-03-01T01")


def _event(body: bytes | str, seq: int) -> func.EventHubEvent:
    data = body.encode() if isinstance(body, str) else body
    return func.EventHubEvent(body=data, enqueued_time=datetime(2024, 3, 1, 2, 1, tzinfo=UTC),
                              partition_key=None, sequence_number=seq, offset=str(seq * 100),
                              iothub_metadata=None)


def _row(device, tag, minute, value=1.5, key="DeviceId"):
    end = f"2024-03-01T01:{minute:02d}:00.0000000Z" if minute < 60 else "2024-03-01T02:00:00.0000000Z"
    return {key: device, "Tag": tag, "WindowEnd": end, "Value": value, "Count": 5}


def test_trigger_records_several_objects_per_event_in_both_formats(app_functions, functions_env):
    fn = app_functions["record_arrivals"].get_user_function()
    lines = "\n".join(json.dumps(_row("1", "1", m)) for m in range(1, 11))
    array = json.dumps([_row(2, 7, m, key="Device") for m in (1, 2, 60)])
    fn(events=[_event(lines, 1), _event(array, 2)])
    arrivals = read_arrivals(functions_env.store(), H)
    assert arrivals == {Sensor("1", "1"): 10, Sensor("2", "7"): 3}


@pytest.mark.reliability("R15")
def test_trigger_duplicate_deliveries_do_not_double_count(app_functions, functions_env):
    fn = app_functions["record_arrivals"].get_user_function()
    body = "\n".join(json.dumps(_row("1", "1", m)) for m in range(1, 6))
    repeated_row = json.dumps([_row("1", "2", 5), _row("1", "2", 5)])
    fn(events=[_event(body, 7), _event(repeated_row, 8)])
    fn(events=[_event(body, 7)])  # redelivered after a lost checkpoint
    fn(events=[_event(repeated_row, 8), _event(body, 7)])
    assert read_arrivals(functions_env.store(), H) == {Sensor("1", "1"): 5, Sensor("1", "2"): 1}


@pytest.mark.reliability("R15")
def test_trigger_keeps_garbage_aside_and_never_fails_the_batch(app_functions, functions_env):
    fn = app_functions["record_arrivals"].get_user_function()
    mixed = "\n".join([json.dumps(_row("1", "1", 1)), "{not json", json.dumps(_row("../x", "1", 2)),
                       json.dumps({**_row("1", "1", 3), "Value": "NaN"}), json.dumps([1, 2])])
    events = [_event(mixed, 20), _event(b"\xff\xfe", 21), _event("", 22),
              _event(json.dumps({"DeviceId": "1", "Tag": "1", "WindowEnd": "never"}), 23),
              _event(json.dumps(_row("3", "3", 4)), 24)]
    fn(events=events)  # must not raise
    store = functions_env.store()
    assert read_arrivals(store, H) == {Sensor("1", "1"): 1, Sensor("3", "3"): 1}
    rejects = [json.loads(store.get(p)) for p in store.list("rejects/events")]
    reasons = " | ".join(r for body in rejects for r in body["reasons"])
    assert len(rejects) == 4
    for needle in ("not JSON", "DeviceId", "not a finite number", "not a JSON object",
                   "not UTF-8", "empty body", "WindowEnd"):
        assert needle in reasons


def test_trigger_arrivals_drive_the_plan(app_functions, functions_env, fleet_csv):
    import numpy as np

    from fleetscore.model.registry import save_model
    from fleetscore.model.training import reference_model

    store = functions_env.store()
    model = reference_model().fit(np.arange(20.0).reshape(-1, 1))
    for sensor in (Sensor("1", "1"), Sensor("9", "9")):
        save_model(store, sensor, model, source="test")
    fn = app_functions["record_arrivals"].get_user_function()
    fn(events=[_event(json.dumps([_row("1", "1", 1), _row("5", "5", 1)]), 30)])
    plan = make_plan(store, H)
    assert [list(map(str, u.sensors)) for u in plan.units] == [["1/1"]]
    assert list(map(str, plan.no_data)) == ["9/9"] and list(map(str, plan.no_model)) == ["5/5"]
