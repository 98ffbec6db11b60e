"""POST /api/runs and GET /api/runs/{window}, and the hourly timer: the real durable client
talks HTTP to a local fake of the Durable extension."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import azure.functions as func
import pytest
from azure.functions.timer import TimerRequest

from fleetscore.core.hours import Hour, previous_full_hour
from fleetscore.runs.engine import ENGINE

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
    from fleetscore.compute.local import SequentialBackend
    from fleetscore.runs.lifecycle import run_hour

    store = functions_env.store()
    run_hour(store, Hour.parse(PAST), SequentialBackend(store, ENGINE))
    durable_fake.set_status(PAST_IID, "Completed", output={"status": "succeeded"})
    response = get(PAST)
    body = json.loads(response.get_body())
    assert response.status_code == 200
    # The store has no data for the hour: the manifest says so, it does not claim success.
    assert body["runtimeStatus"] == "Completed" and body["manifest"]["status"] == "no_data"
    assert body["manifest"]["run_id"] and body["manifest"]["kept_from_earlier_run"] == []


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


def _raw_get(durable_fake, iid: str):
    import urllib.error
    import urllib.request

    url = f"http://127.0.0.1:{durable_fake.port}/durabletask/instances/{iid}"
    try:
        with urllib.request.urlopen(url) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read()


@pytest.mark.parametrize("state,code", [("Pending", 202), ("Running", 202), ("Suspended", 202),
                                        ("Completed", 200), ("Failed", 200), ("Terminated", 200)])
def test_durable_fake_status_codes_are_the_extensions(durable_fake, run_async, state, code):
    from azure.durable_functions import DurableOrchestrationClient

    durable_fake.set_status("score-x", state)
    status, headers, body = _raw_get(durable_fake, "score-x")
    assert status == code and json.loads(body)["runtimeStatus"] == state
    if code == 202:
        assert headers["Location"].endswith("/durabletask/instances/score-x")
        assert headers["Retry-After"] == "5"
    else:
        assert "Location" not in headers and "Retry-After" not in headers
    assert _raw_get(durable_fake, "score-unknown")[0] == 404
    # The SDK reads every one of them as a status, never as an error.
    client = DurableOrchestrationClient(durable_fake.binding)
    assert run_async(client.get_status("score-x")).runtime_status.value == state


@pytest.mark.parametrize("state,refused", [("Pending", True), ("Running", True), ("Suspended", True),
                                           ("Completed", False), ("Failed", False),
                                           ("Terminated", False)])
def test_durable_fake_refuses_to_start_a_running_instance(durable_fake, run_async, state, refused):
    from azure.durable_functions import DurableOrchestrationClient

    client = DurableOrchestrationClient(durable_fake.binding)
    durable_fake.set_status("score-x", state)
    if refused:
        with pytest.raises(Exception, match=f"status {state} already exists"):
            run_async(client.start_new("score_window", "score-x", {"window": PAST}))
        assert durable_fake.instances["score-x"]["runtimeStatus"] == state
    else:
        assert run_async(client.start_new("score_window", "score-x", {"window": PAST})) == "score-x"
        assert durable_fake.instances["score-x"]["runtimeStatus"] == "Pending"


@pytest.mark.reliability("R26")
@pytest.mark.parametrize("winner", ["timer", "http"])
def test_timer_and_http_race_for_the_same_hour_start_it_once(
        app_functions, durable_fake, run_async, functions_env, caplog, winner):
    """The hourly timer and POST /api/runs for the same hour at the same moment: both see no
    instance, both start; the extension lets exactly one through. The other is refused and
    says so: 409 for HTTP, a log line for the timer; nothing raises."""
    import asyncio
    import logging

    window = str(previous_full_hour(datetime.now(UTC)))
    iid = "score-" + window.replace("-", "")
    timer_fn = app_functions["scheduled_run"].get_user_function()
    post_fn = app_functions["start_runs"].get_user_function()
    durable_fake.hold_status_reads(2)  # both read "no instance" before either starts

    def delay(body):  # the HTTP request carries sensors, the timer's does not
        is_http = bool(body.get("sensors"))
        return 0.3 if is_http == (winner == "timer") else 0.0
    durable_fake.start_delay = delay

    async def race():
        return await asyncio.gather(
            timer_fn(timer=TimerRequest(past_due=False), client=durable_fake.binding),
            post_fn(req=_post({"window": window, "sensors": ["1/1"]}), client=durable_fake.binding))

    with caplog.at_level(logging.INFO, logger="fleetscore.triggers"):
        _, response = run_async(race())
    assert len(durable_fake.starts) == 1 and len(durable_fake.refused) == 1
    [(_, started_iid, body)] = durable_fake.starts
    assert started_iid == iid
    lost = [r.getMessage() for r in caplog.records if "started by another starter" in r.getMessage()]
    if winner == "timer":
        assert body["sensors"] is None
        assert response.status_code == 409
        assert json.loads(response.get_body()) == {"error": f"{window} is already running", "id": iid}
        assert lost == []
    else:
        assert body["sensors"] == ["1/1"]
        assert response.status_code == 202 and json.loads(response.get_body())["id"] == iid
        assert lost == [f"{iid} was started by another starter at the same moment: not started again"]


@pytest.mark.reliability("R70")
@pytest.mark.parametrize("body", [b"[" * 200_000, b'{"window": ' * 20_000,
                                  b"[" * 100_000 + b"]" * 100_000],
                         ids=["open-arrays", "open-objects", "closed-arrays"])
def test_http_trigger_deeply_nested_json_answers_400_not_500(post, durable_fake, body):
    # json.loads recurses once per level: 200,000 levels exceed Python's recursion limit and
    # raised RecursionError, which the host turned into a 500. It is a malformed body: 400.
    assert len(body) <= 256 * 1024  # under the size limit: the depth is what is refused
    response = post(body)
    assert response.status_code == 400
    error = json.loads(response.get_body())["error"]
    assert "nested" in error
    assert durable_fake.starts == []


def test_http_trigger_get_with_a_damaged_manifest_answers_its_status_and_the_damage(
        get, post, durable_fake, functions_env):
    """A damaged manifest is not a server error: the run's status is known, and the body
    says what is wrong with the file (`fleetscore verify` names it too)."""
    post({"window": PAST})
    durable_fake.set_status(PAST_IID, "Completed", output={"status": "succeeded"})
    functions_env.store().put(f"runs/{PAST}.json", b'{"window": "cut')
    response = get(PAST)
    body = json.loads(response.get_body())
    assert response.status_code == 200 and body["runtimeStatus"] == "Completed"
    assert "damaged" in body["manifest"]["error"]
