"""The app as the Functions host indexes it, and its configuration files."""

from __future__ import annotations

import json
import re
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _bindings(function) -> dict[str, dict]:
    raw = [json.loads(b) if isinstance(b, str) else b for b in function.get_raw_bindings()]
    return {b["type"]: b for b in raw}


def test_function_app_indexes_every_function(app_functions):
    assert set(app_functions) == {
        "score_window", "score_units", "plan_window", "submit_units", "unit_status",
        "finalize_window", "scheduled_run", "start_runs", "get_run", "record_arrivals",
        # The refit's orchestration and activities; its timer only with a schedule set
        # (tests/functions/test_refit.py).
        "refit_models", "refit_begin", "refit_submit", "refit_status", "refit_finish",
    }


def test_function_app_orchestrations_and_activities(app_functions):
    for name in ("score_window", "score_units"):
        assert set(_bindings(app_functions[name])) == {"orchestrationTrigger"}
    for name in ("plan_window", "submit_units", "unit_status", "finalize_window"):
        assert _bindings(app_functions[name])["activityTrigger"]["name"] == "payload"


def test_function_app_timer_with_durable_client(app_functions):
    b = _bindings(app_functions["scheduled_run"])
    assert b["timerTrigger"]["schedule"] == "%SCORING_SCHEDULE%"
    assert b["timerTrigger"].get("runOnStartup") in (False, None)
    assert "durableClient" in b


def test_function_app_http_routes_at_function_auth(app_functions):
    post = _bindings(app_functions["start_runs"])["httpTrigger"]
    get = _bindings(app_functions["get_run"])["httpTrigger"]
    assert (post["route"], [m.upper() for m in post["methods"]], post["authLevel"].lower()) == \
        ("runs", ["POST"], "function")
    assert (get["route"], [m.upper() for m in get["methods"]], get["authLevel"].lower()) == \
        ("runs/{window}", ["GET"], "function")
    assert "durableClient" in _bindings(app_functions["start_runs"])


def test_function_app_event_hub_trigger_many(app_functions):
    eh = _bindings(app_functions["record_arrivals"])["eventHubTrigger"]
    assert eh["cardinality"].lower() == "many"
    assert eh["eventHubName"] == "%WINDOWS_EVENTHUB%"
    assert eh["connection"] == "WindowsEventHub"


def test_function_app_host_json():
    host = json.loads((ROOT / "host.json").read_text())
    assert host["version"] == "2.0"
    assert host["extensionBundle"] == {"id": "Microsoft.Azure.Functions.ExtensionBundle",
                                       "version": "[4.*, 5.0.0)"}
    assert host["extensions"]["durableTask"]["hubName"] == "%DURABLE_TASK_HUB%"
    sampling = host["logging"]["applicationInsights"]["samplingSettings"]
    assert "Exception" in sampling["excludedTypes"]  # failures are never sampled away
    assert re.fullmatch(r"\d\d:\d\d:\d\d", host["functionTimeout"])


def test_function_app_local_settings_list_every_setting_the_code_reads():
    values = json.loads((ROOT / "local.settings.example.json").read_text())["Values"]
    assert values["FUNCTIONS_WORKER_RUNTIME"] == "python"
    assert values["AzureWebJobsStorage"] == "UseDevelopmentStorage=true"
    read = set(re.findall(r'"(FLEETSCORE_[A-Z_]+)"', (ROOT / "fleetscore" / "settings.py").read_text()))
    code = "".join(p.read_text() for p in [*ROOT.glob("triggers/*.py"), ROOT / "host.json"])
    read |= set(re.findall(r"%([A-Z_]+)%", code))
    assert read and read <= set(values), sorted(read - set(values))


def test_function_app_requirements_pinned_and_in_step_with_the_package():
    reqs = {}
    for line in (ROOT / "requirements.txt").read_text().splitlines():
        line = line.split("#")[0].strip()
        if line:
            name, _, version = line.partition("==")
            assert version, f"requirements.txt: {line} is not pinned with =="
            reqs[name.lower()] = version
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    pins = {}
    extras = (d for ds in project["optional-dependencies"].values() for d in ds)
    for dep in [*project["dependencies"], *extras]:
        name, _, version = dep.partition("==")
        assert version, f"pyproject.toml: {dep} is not pinned"
        pins[name.lower()] = version
    for name in ("azure-functions", "azure-functions-durable", "azure-batch", "azure-eventhub",
                 "azure-storage-blob", "scikit-learn", "numpy", "pyarrow", "skops"):
        assert name in reqs, f"requirements.txt lacks {name}"
    assert {n: v for n, v in reqs.items() if n in pins and pins[n] != v} == {}
    assert set(project["dependencies"][i].partition("==")[0].lower()
               for i in range(len(project["dependencies"]))) <= set(reqs)


def test_the_event_hub_trigger_retries_a_failed_batch_until_the_store_answers(app_functions):
    """The host moves an Event Hub's checkpoint on whether a batch succeeded or not: only a
    retry policy keeps a batch whose store write failed (R15: records are per event, created
    once, so a retry counts nothing twice)."""
    assert app_functions["record_arrivals"].get_settings_dict("retry_policy") == {
        "setting_name": "retry_policy", "strategy": "exponential_backoff",
        "max_retry_count": "-1", "minimum_interval": "00:00:05", "maximum_interval": "00:05:00"}
