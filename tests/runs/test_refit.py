"""The refit policy (fleetscore.runs.refit): plan, train a group under the refit's lock, finish
(compare, gates, promote, bank), and the manifest both drivers write."""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime, timedelta

import pytest

from fleetscore.core.hours import Hour
from fleetscore.core.sensors import Sensor
from fleetscore.data.ingest import ingest_file
from fleetscore.errors import UsageError
from fleetscore.model.challengers import load_challengers
from fleetscore.model.registry import model_path
from fleetscore.model.training import train
from fleetscore.model.versions import MODELS_LOCK, ModelsLock, read_history
from fleetscore.runs import refit as policy

NOW = datetime(2024, 3, 2, 3, 0, tzinfo=UTC)
TTL = timedelta(minutes=10)
SENSORS = ["1/1", "1/2", "dev_a/t.x"]


@pytest.fixture
def fleet(local_store, fleet_csv):
    """Three sensors over 2024-03-01T00..02, champions trained on T00."""
    ingest_file(local_store, fleet_csv)
    train(local_store, estimator="ocsvm", until=Hour.parse("2024-03-01T00"))
    return local_store


def _plan(store, refit_id="refit-1", max_groups=1, **options):
    options = policy.RefitOptions(**{"days": 1, "compare_hours": 2, "estimator": "ocsvm", **options})
    return policy.plan(store, refit_id, options, started=NOW, ttl=TTL, max_groups=max_groups)


def _run(store, refit_id="refit-1", max_groups=1, **options):
    """The whole policy in this process, as the CLI drives it."""
    lock = policy.RefitLock(store, refit_id, ttl=TTL)
    assert lock.take()
    try:
        found = _plan(store, refit_id, max_groups, **options)
        results = {g: policy.train_group(store, refit_id, g) for g in found.groups}
        return policy.finish(store, found, results, lock=lock, now=NOW, by="test")
    finally:
        lock.release()


def test_plan_splits_the_sensors_and_keeps_the_last_hours_for_comparing(fleet):
    found = _plan(fleet, max_groups=2)
    assert (found.since, found.until) == ("2024-02-29T01", "2024-03-01T00")  # one day
    assert found.compared == ("2024-03-01T01", "2024-03-01T02")
    assert found.groups == ("g000000", "g000001") and found.sensors == 3
    groups = [json.loads(fleet.get(policy.group_path("refit-1", g))) for g in found.groups]
    assert sorted(s for g in groups for s in g) == SENSORS and all(groups)
    assert policy.read_plan(fleet, "refit-1") == found  # stored as it was made
    assert found.lock_ttl_s == 600
    with pytest.raises(UsageError, match="3 hours with data: not enough to train on some"):
        _plan(fleet, compare_hours=3)


def test_manifest_round_trips_through_its_one_json_form(fleet):
    manifest = _run(fleet, max_groups=2, max_anomaly_rate=0.5)
    assert policy.read_manifest(fleet, manifest.refit_id) == manifest
    text = json.dumps(manifest.to_json())
    assert policy.RefitManifest.from_json(json.loads(text)) == manifest
    early = policy.early("refit-2", policy.LOCKED, "held", started="a", finished="b", by="x",
                         options=policy.RefitOptions())
    assert policy.RefitManifest.from_json(json.loads(json.dumps(early.to_json()))) == early
    assert fleet.exists("refit/refit-1.json")


def test_finish_promotes_only_the_challengers_that_pass_the_gates(fleet):
    # Learn each challenger's anomaly rate with --review, then set the gate between them.
    reviewed = _run(fleet, "refit-r", review=True)
    assert (reviewed.status, reviewed.trained, reviewed.promoted) == ("succeeded", 3, 0)
    assert {o.reason for o in reviewed.sensors.values()} == {policy.REVIEW}
    assert all(read_history(fleet, Sensor.parse(s)).champion.number == 1 for s in SENSORS)
    # Left for review, the challengers are in the challenger bank: runs shadow-score them.
    shadowed = load_challengers(fleet, sorted(Sensor.parse(s) for s in SENSORS))
    assert [p.key for p in shadowed.pointers] == SENSORS
    assert len(shadowed.bank) + len(shadowed.bank.forests) == 3  # compiled, whatever their kind

    manifest = _run(fleet, "refit-g", max_anomaly_rate=0.0)  # nothing flags no window at all
    assert (manifest.status, manifest.trained, manifest.promoted, manifest.left) == \
        ("succeeded", 3, 0, 3)
    for sensor, outcome in manifest.sensors.items():
        assert outcome.outcome == policy.LEFT and "more than 0.0%" in outcome.reason, sensor
        assert read_history(fleet, Sensor.parse(sensor)).champion.number == 1

    manifest = _run(fleet, "refit-p", max_anomaly_rate=1.0)
    assert (manifest.promoted, manifest.left) == (3, 0)
    assert manifest.bank.startswith("model bank: 3 of 3")
    for sensor, outcome in manifest.sensors.items():
        history = read_history(fleet, Sensor.parse(sensor))
        champion = history.champion
        assert outcome.outcome == policy.PROMOTED and champion.number == outcome.version
        assert history.events[-1].by == "refit"
        # The champion view holds exactly the version's bytes.
        data = fleet.get(model_path(Sensor.parse(sensor)))
        assert hashlib.sha256(data).hexdigest() == champion.sha256


def test_a_group_trains_only_while_the_lock_names_its_refit(fleet):
    found = _plan(fleet, "refit-a")
    [group] = found.groups
    before = {s: len(read_history(fleet, Sensor.parse(s)).versions) for s in SENSORS}

    refused = policy.train_group(fleet, "refit-a", group)  # nobody holds the lock
    assert refused.status == "refused" and "no longer names refit refit-a" in refused.error
    fleet.delete(policy.result_path("refit-a", group))
    with ModelsLock(fleet):  # another command holds it
        refused = policy.train_group(fleet, "refit-a", group)
    assert refused.status == "refused"
    assert {s: len(read_history(fleet, Sensor.parse(s)).versions) for s in SENSORS} == before

    fleet.delete(policy.result_path("refit-a", group))
    lock = policy.RefitLock(fleet, "refit-a", ttl=TTL)
    assert lock.take()
    trained = policy.train_group(fleet, "refit-a", group)
    assert trained.status == "trained" and [s for s, _ in trained.trained] == SENSORS
    again = policy.train_group(fleet, "refit-a", group)  # a retried task: recorded, not redone
    assert again == trained
    assert all(len(read_history(fleet, Sensor.parse(s)).versions) == 2 for s in SENSORS)
    lock.release()
    assert not fleet.exists(MODELS_LOCK)


def test_a_second_refit_cannot_take_the_lock_and_says_who_holds_it(fleet):
    first = policy.RefitLock(fleet, "refit-first", ttl=TTL)
    assert first.take()
    second = policy.RefitLock(fleet, "refit-second", ttl=TTL)
    assert not second.take()
    assert policy.holder(fleet).startswith("refit refit-first (until ")
    first.release()
    assert second.take()
    second.release()


def test_failed_groups_and_a_lost_lock_are_said_per_sensor(fleet):
    found = _plan(fleet, "refit-f", max_groups=2)
    lock = policy.RefitLock(fleet, "refit-f", ttl=TTL)
    assert lock.take()
    first, second = found.groups
    results = {first: policy.train_group(fleet, "refit-f", first),
               second: "task g000001 failed: TaskUserError"}
    manifest = policy.finish(fleet, found, results, lock=lock, now=NOW, by="test")
    assert manifest.status == policy.PARTIAL and manifest.failed > 0
    lost = [s for s, o in manifest.sensors.items() if o.outcome == policy.GROUP_FAILED]
    assert lost and all("TaskUserError" in manifest.sensors[s].reason for s in lost)

    lock.release()

    # Another refit's lock lapses and another command takes it before the promotion: nothing
    # promoted (a refit of its own: the one above promoted some).
    found = _plan(fleet, "refit-g", max_groups=1)
    lock = policy.RefitLock(fleet, "refit-g", ttl=TTL)
    assert lock.take()
    results = {g: policy.train_group(fleet, "refit-g", g) for g in found.groups}
    fleet.delete(MODELS_LOCK)
    with ModelsLock(fleet):
        manifest = policy.finish(fleet, found, results, lock=lock, now=NOW, by="test")
    assert manifest.status == policy.FAILED and manifest.promoted == 0
    assert manifest.reason.startswith("nothing promoted")


def test_the_cli_refit_writes_its_manifest(fleet, cli):
    code, out, err = cli("refit", "--store", str(fleet.root), "--days", "1",
                         "--compare-hours", "2")
    assert code == 0, err
    [path] = [p for p in fleet.list("refit") if p.endswith(".json")]
    manifest = policy.read_manifest(fleet, path.removeprefix("refit/").removesuffix(".json"))
    assert (manifest.status, manifest.trained, manifest.promoted, manifest.by) == \
        ("succeeded", 3, 3, "cli")
    assert f"manifest: {path}" in out
    assert list(fleet.list(f"refit/{manifest.refit_id}/")) == []  # working files dropped
    assert not fleet.exists(MODELS_LOCK)


def test_the_cli_refit_takes_the_challengers_estimator_and_features(fleet, cli):
    code, _, err = cli("refit", "--store", str(fleet.root), "--days", "1", "--compare-hours",
                       "2", "--review", "--estimator", "iforest", "--features", "hour")
    assert code == 0, err
    challenger = read_history(fleet, Sensor.parse(SENSORS[0])).challenger
    assert challenger.estimator == "IsolationForest" and challenger.features == ("hour",)
    code, _, err = cli("refit", "--store", str(fleet.root), "--features", "speed")
    assert code == 2 and "unknown feature 'speed'" in err and "Traceback" not in err


def test_a_refit_trains_challengers_of_the_estimator_and_features_it_is_given(fleet):
    """The settings' FLEETSCORE_REFIT_ESTIMATOR and _FEATURES reach every group's training,
    through the plan's JSON (as a Batch task reads it)."""
    from fleetscore.settings import Settings

    request = Settings.from_env({"FLEETSCORE_REFIT_ESTIMATOR": "iforest",
                                 "FLEETSCORE_REFIT_FEATURES": "diff"}).refit_input()
    manifest = _run(fleet, review=True, **{k: request["options"][k]
                                           for k in ("estimator", "features")})
    assert manifest.options.features == ("diff",)
    found = policy.read_plan(fleet, manifest.refit_id)
    assert found.options == manifest.options
    for key in SENSORS:
        challenger = read_history(fleet, Sensor.parse(key)).challenger
        assert challenger.estimator == "IsolationForest" and challenger.features == ("diff",)
    assert "estimator" not in Settings.from_env({}).refit_input()["options"]  # the default
    with pytest.raises(UsageError, match="unknown feature 'speed'"):
        policy.RefitOptions(features="speed")
    with pytest.raises(UsageError, match="refit estimator 'svm'"):
        policy.RefitOptions(estimator="svm")


def test_a_finish_retried_after_it_promoted_reports_the_promotions_and_rebuilds(fleet):
    """The Functions refit retries finish: an attempt that promoted and then failed (its bank
    rebuild, here) leaves champions that are no challengers any more. The retry says they
    were promoted and rebuilds the champions' bank, instead of 'left' and no bank."""
    lock = policy.RefitLock(fleet, "refit-1", ttl=TTL)
    assert lock.take()
    found = _plan(fleet, max_anomaly_rate=1.0)
    results = {g: policy.train_group(fleet, "refit-1", g) for g in found.groups}

    def failing(store, champions):
        raise OSError("the store failed during the bank rebuild")

    with pytest.raises(OSError):
        policy.finish(fleet, found, results, lock=lock, now=NOW, by="test", rebuild=failing)
    rebuilt = []
    manifest = policy.finish(fleet, found, results, lock=lock, now=NOW, by="test",
                             rebuild=lambda store, champions: rebuilt.append(champions) or "")
    lock.release()
    assert manifest.promoted == 3 and rebuilt == [True]
    assert {o.outcome for o in manifest.sensors.values()} == {policy.PROMOTED}
