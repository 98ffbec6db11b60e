"""POST /api/runs and GET /api/runs/{window}, and the hourly timer: the real durable client
talks HTTP to a local fake of the Durable extension."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import azure.functions as func
import pytest
from azure.functions.timer import TimerRequest

from fleetscore.hours import Hour, previous_full_hour

PAST = str(Hour.from_datetime(datetime.now(UTC)) - 5)
PAST_IID = "score-" + PAST.replace("-", "")


def _post(body) -> func.HttpRequest:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    return func.HttpRequest(method="POST", url="https://fleet.example/api/runs", headers={},
                            params={}, route_params={}, body=data)


def _get(window: str) -> func.HttpRequest:
    return func.HttpRequest(method="GET", url=f"https://fleet.example/api/runs/{window}",
                            headers={}, params={}, route_params={"window": window}, body=b"")


@pytest.fixture
def post(app_functions, durable_fake, run_async, functions_env):
    fn = app_functions["start_runs"].get_user_function()
    return lambda body: run_async(fn(req=_post(body), client=durable_fake.binding))


@pytest.fixture
def get(app_functions, durable_fake, run_async, functions_env):
    fn = app_functions["get_run"].get_user_function()
    return lambda window: run_async(fn(req=_get(window), client=durable_fake.binding))


NOW = datetime.now(UTC)
MALFORMED = [
    b"not json",
    b"[1, 2]",
    b"",
    {"window": "yesterday"},
    {"window": "2024-13-01T00"},
    {"window": PAST, "extra": 1},
    {"from": PAST},
    {"window": PAST, "from": PAST, "to": PAST},
    {"from": PAST, "to": str(Hour.parse(PAST) - 1)},
    {"from": str(Hour.parse(PAST) - 200), "to": PAST},
    {"window": str(Hour.from_datetime(NOW + timedelta(hours=3)))},
    {"window": str(Hour.from_datetime(NOW))},
    {"window": PAST, "sensors": ["../etc/passwd"]},
    {"window": PAST, "sensors": "1/1"},
    {"window": PAST, "sensors": []},
    {"window": PAST, "sensors": [f"d/{i}" for i in range(10_001)]},
    {"window": PAST, "force": "yes"},
    {"window": 2024},
    b"x" * 300_000,
]


@pytest.mark.reliability("R14")
@pytest.mark.parametrize("body", MALFORMED, ids=lambda b: str(b)[:40])
def test_http_trigger_malformed_bodies_answer_400_and_start_nothing(post, durable_fake, body):
    response = post(body)
    assert response.status_code == 400
    assert json.loads(response.get_body())["error"]
    assert durable_fake.starts == []


def test_http_trigger_starts_one_hour_with_check_status_payload(post, durable_fake):
    response = post({"window": PAST, "sensors": ["1/1", "1/1", "dev_a/t.x"]})
    assert response.status_code == 202
    payload = json.loads(response.get_body())
    assert payload["id"] == PAST_IID
    assert payload["statusQueryGetUri"].startswith("https://fleet.example/")
    [(name, iid, body)] = durable_fake.starts
    assert (name, iid) == ("score_window", PAST_IID)
    assert body["window"] == PAST and body["sensors"] == ["1/1", "dev_a/t.x"]


def test_http_trigger_range_starts_every_hour(post, durable_fake):
    first = str(Hour.parse(PAST) - 2)
    response = post({"from": first, "to": PAST})
    assert response.status_code == 202
    runs = json.loads(response.get_body())["runs"]
    assert [r["window"] for r in runs] == [first, str(Hour.parse(PAST) - 1), PAST]
    assert [iid for _, iid, _ in durable_fake.starts] == [r["id"] for r in runs]


@pytest.mark.reliability("R26")
def test_http_trigger_409_while_running_and_for_completed_without_force(post, durable_fake):
    durable_fake.set_status(PAST_IID, "Running")
    response = post({"window": PAST, "force": True})
    assert response.status_code == 409 and "already running" in json.loads(response.get_body())["error"]
    durable_fake.set_status(PAST_IID, "Completed")
    response = post({"window": PAST})
    assert response.status_code == 409 and "force" in json.loads(response.get_body())["error"]
    assert durable_fake.starts == []
    assert post({"window": PAST, "force": True}).status_code == 202
    assert len(durable_fake.starts) == 1


def test_http_trigger_range_with_one_running_hour_starts_nothing(post, durable_fake):
    durable_fake.set_status(PAST_IID, "Pending")
    response = post({"from": str(Hour.parse(PAST) - 3), "to": PAST})
    assert response.status_code == 409 and durable_fake.starts == []


def test_http_trigger_get_status_and_manifest(get, post, durable_fake, functions_env, trained_store):
    assert get(PAST).status_code == 404
    assert get("not-an-hour").status_code == 400
    post({"window": PAST})
    body = json.loads(get(PAST).get_body())
    assert body["runtimeStatus"] == "Pending" and "manifest" not in body
    from fleetscore.backends.local import SequentialBackend
    from fleetscore.runs import run_hour

    store = functions_env.store()
    run_hour(store, Hour.parse(PAST), SequentialBackend(store))
    durable_fake.set_status(PAST_IID, "Completed", output={"status": "succeeded"})
    response = get(PAST)
    body = json.loads(response.get_body())
    assert response.status_code == 200
    # The store has no data for the hour: the manifest says so, it does not claim success.
    assert body["runtimeStatus"] == "Completed" and body["manifest"]["status"] == "no_data"


def test_timer_trigger_starts_the_previous_hour_once(app_functions, durable_fake, run_async,
                                                     functions_env, monkeypatch):
    monkeypatch.setenv("FLEETSCORE_POLL_SECONDS", "45")
    functions_env.reset()
    fn = app_functions["scheduled_run"].get_user_function()
    window = str(previous_full_hour(datetime.now(UTC)))
    iid = "score-" + window.replace("-", "")
    run_async(fn(timer=TimerRequest(past_due=False), client=durable_fake.binding))
    assert [(n, i) for n, i, _ in durable_fake.starts] == [("score_window", iid)]
    assert durable_fake.starts[0][2]["poll_seconds"] == 45
    for state in ("Pending", "Running", "Completed"):
        durable_fake.set_status(iid, state)
        run_async(fn(timer=TimerRequest(past_due=True), client=durable_fake.binding))
        assert len(durable_fake.starts) == 1, f"started again while {state}"
    durable_fake.set_status(iid, "Failed")
    run_async(fn(timer=TimerRequest(past_due=False), client=durable_fake.binding))
    assert len(durable_fake.starts) == 2  # a failed hour is retried by the next tick
