"""A model's life through the command line: train, train --challenger, history, compare,
promote through gates, rollback, migrate; each command in a process of its own."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime

from fleetscore.data.ingest import ingest_file
from tests.cli.conftest import fleetscore, one_line_usage_error

TRAIN = ("train", "--estimator", "ocsvm")  # these flows count the OneClassSVM's flags


def test_train_compare_promote_and_roll_back(local_store, fleet_csv):
    ingest_file(local_store, fleet_csv)
    store = str(local_store.root)
    assert fleetscore(*TRAIN, "--store", store, "--until", "2024-03-01T00").returncode == 0
    before_challengers = datetime.now(UTC).isoformat()
    time.sleep(0.05)
    trained = fleetscore(*TRAIN, "--store", store, "--until", "2024-03-01T00", "--challenger",
                         "--nu", "0.3")
    assert trained.returncode == 0 and "trained 3 challengers" in trained.stdout
    history = json.loads(fleetscore("models", "history", "1/1", "--store", store, "--json").stdout)
    assert [(v["number"], v["role"]) for v in history["versions"]] == [
        (1, "champion"), (2, "challenger")]

    compared = json.loads(fleetscore("models", "compare", "--store", store, "--from",
                                     "2024-03-01T01", "--to", "2024-03-01T02", "--json").stdout)
    rates = {c["sensor"]: c["challenger_anomaly_rate"] for c in compared["sensors"]}
    assert set(rates) == {"1/1", "1/2", "dev_a/t.x"} and all(r > 0 for r in rates.values())
    cut = sorted(rates.values())[1]  # two pass, the most flagging one does not
    promoted = fleetscore("models", "promote", "--store", store, "--from", "2024-03-01T01",
                          "--to", "2024-03-01T02", "--max-anomaly-rate", str(cut))
    assert promoted.returncode == 3, promoted.stderr
    worst = max(rates, key=rates.get)
    assert f"{worst}: v2 stays challenger: flags" in promoted.stdout
    assert promoted.stdout.count("promoted") == 2 and "model bank:" in promoted.stdout
    best = min(rates, key=rates.get)
    roles = json.loads(fleetscore("models", "history", best, "--store", store, "--json").stdout)
    assert [v["role"] for v in roles["versions"]] == ["retired", "champion"]

    rolled = fleetscore("models", "rollback", "--sensor", best, "--store", store)
    assert rolled.returncode == 0 and f"{best}: v1 is champion again (was v2)" in rolled.stdout
    everyone = fleetscore("models", "rollback", "--all", "--to", before_challengers, "--store",
                          store)
    assert everyone.returncode == 0, everyone.stderr
    for sensor in rates:
        h = json.loads(fleetscore("models", "history", sensor, "--store", store, "--json").stdout)
        assert [v["role"] for v in h["versions"]][0] == "champion", sensor
    assert fleetscore("verify", "--store", store).returncode == 0
    run = fleetscore("run", "--window", "2024-03-01T01", "--store", store)
    assert run.returncode == 0, run.stderr


def test_lifecycle_usage_errors(local_store, fleet_csv):
    ingest_file(local_store, fleet_csv)
    store = str(local_store.root)
    fleetscore(*TRAIN, "--store", store, "--until", "2024-03-01T00")
    assert "give --sensor DEVICE/TAG (repeatable) or --all" in one_line_usage_error(
        fleetscore("models", "rollback", "--store", store))
    assert "has no earlier champion to roll back to" in one_line_usage_error(
        fleetscore("models", "rollback", "--sensor", "1/1", "--store", store))
    assert "--max-anomaly-rate 2.0: a share between 0 and 1" in one_line_usage_error(
        fleetscore("models", "promote", "--store", store, "--max-anomaly-rate", "2"))
    nothing = fleetscore("models", "promote", "--store", store)
    assert nothing.returncode == 0 and "nothing to promote" in nothing.stdout
    migrated = fleetscore("models", "migrate", "--store", store)
    assert "every model already has its versions" in migrated.stdout


def test_refit_trains_challengers_compares_them_and_promotes_or_leaves_them(local_store,
                                                                             fleet_csv):
    ingest_file(local_store, fleet_csv)
    store = str(local_store.root)
    fleetscore(*TRAIN, "--store", store, "--until", "2024-03-01T00")
    reviewed = fleetscore("refit", "--store", store, "--days", "1", "--compare-hours", "2",
                          "--review")
    assert reviewed.returncode == 0, reviewed.stderr
    assert "trained 3 challengers on" in reviewed.stdout
    assert "compared on 2024-03-01T01 .. 2024-03-01T02: 3 of 3 pass the gates, left for review" \
        in reviewed.stdout
    h = json.loads(fleetscore("models", "history", "1/1", "--store", store, "--json").stdout)
    assert [v["role"] for v in h["versions"]] == ["champion", "challenger"]
    refitted = fleetscore("refit", "--store", store, "--days", "1", "--compare-hours", "2")
    assert refitted.returncode == 0 and "3 of 3 pass the gates, promoted" in refitted.stdout
    h = json.loads(fleetscore("models", "history", "1/1", "--store", store, "--json").stdout)
    assert [v["role"] for v in h["versions"]] == ["retired", "retired", "champion"]
    assert h["events"][-1]["by"] == "refit"
    assert "not enough to train on some" in one_line_usage_error(
        fleetscore("refit", "--store", store, "--compare-hours", "3"))


def test_a_range_reruns_the_hours_a_promote_or_rollback_made_stale(local_store, fleet_csv):
    ingest_file(local_store, fleet_csv)
    store = str(local_store.root)
    fleetscore(*TRAIN, "--store", store, "--until", "2024-03-01T00")
    fleetscore(*TRAIN, "--store", store, "--until", "2024-03-01T00", "--nu", "0.2")  # v2

    def ranged() -> dict:
        done = fleetscore("run", "--from", "2024-03-01T01", "--to", "2024-03-01T02", "--store",
                          store, "--json")
        assert done.returncode == 0, done.stderr
        return json.loads(done.stdout)

    assert len(ranged()["runs"]) == 2
    assert ranged()["skipped"] == ["2024-03-01T01", "2024-03-01T02"]  # current: nothing to do
    fleetscore("models", "rollback", "--sensor", "1/2", "--store", store)

    def stale() -> list[str]:
        listed = fleetscore("runs", "--stale", "--json", "--store", store)
        assert listed.returncode == 0, listed.stderr
        return [h["window"] for h in json.loads(listed.stdout)["hours"]]

    assert stale() == ["2024-03-01T01", "2024-03-01T02"]
    shown = fleetscore("runs", "--store", store, columns=160).stdout
    assert "2 hours scored by a champion that is no longer current" in shown
    again = ranged()
    assert len(again["runs"]) == 2 and again["skipped"] == []  # scored by another model since
    assert stale() == []


def test_challengers_trained_on_the_last_days_are_shadow_scored(local_store, fleet_csv):
    ingest_file(local_store, fleet_csv)
    store = str(local_store.root)
    fleetscore(*TRAIN, "--store", store, "--until", "2024-03-01T00")
    trained = fleetscore(*TRAIN, "--store", store, "--days", "1", "--challenger", "--nu", "0.3")
    assert trained.returncode == 0, trained.stderr
    assert "on 2024-03-01T00 .. 2024-03-01T02" in trained.stdout
    assert "challenger bank: 3 of 3 challengers compiled" in trained.stdout
    run = fleetscore("run", "--window", "2024-03-01T02", "--store", store)
    assert run.returncode == 0, run.stderr
    shadows = list((local_store.root / "shadow" / "2024" / "03" / "01" / "02").glob("*.csv"))
    lines = [line for f in shadows for line in f.read_text().splitlines()]
    assert set(lines[::61]) == {"TS,Device,Tag,Val,Prediction,Score,Version"}
    assert len(lines) == 3 * 61 and all(line.endswith(",2") for line in lines if line[0] == "2")
    assert "--days takes a number of days" in one_line_usage_error(
        fleetscore(*TRAIN, "--store", store, "--days", "0"))


def test_refit_that_trains_nothing_says_so(local_store, tmp_path):
    from tests.conftest import minute_readings, write_readings

    rows = minute_readings("A", "x", "2024-03-01 00:00:00", 2, seed=0)  # 2 windows: too few
    rows += minute_readings("A", "x", "2024-03-01 01:00:00", 60, seed=1)
    ingest_file(local_store, write_readings(tmp_path / "few.csv", rows))
    line = one_line_usage_error(fleetscore("refit", "--store", str(local_store.root), "--days",
                                           "1", "--compare-hours", "1"))
    assert "refit trained no challenger on" in line


def test_rollback_all_to_a_time_keeps_the_sensors_that_came_later(local_store, fleet_csv):
    """Every sensor is resolved before any changes: one that had no champion at TIME keeps
    its own and is named, the others roll back, and the bank follows."""
    from fleetscore.core.hours import Hour
    from fleetscore.core.sensors import Sensor
    from fleetscore.model.training import train

    ingest_file(local_store, fleet_csv)
    store = str(local_store.root)
    until = Hour.parse("2024-03-01T00")
    train(local_store, estimator="ocsvm", until=until, sensors={Sensor("1", "1"), Sensor("1", "2")})
    then = datetime.now(UTC).isoformat()
    time.sleep(0.05)
    train(local_store, estimator="ocsvm", until=until, nu=0.3)  # v2 for two, v1 for dev_a/t.x
    rolled = fleetscore("models", "rollback", "--all", "--to", then, "--store", store)
    assert rolled.returncode == 0, rolled.stderr
    assert "dev_a/t.x: had no champion at" in rolled.stdout
    assert "1/1: v1 is champion again (was v2)" in rolled.stdout
    assert "1/2: v1 is champion again (was v2)" in rolled.stdout and "model bank:" in rolled.stdout
    assert (local_store.root / "bank" / "index.json").exists()
    h = json.loads(fleetscore("models", "history", "dev_a/t.x", "--store", store, "--json").stdout)
    assert [v["role"] for v in h["versions"]] == ["champion"]
