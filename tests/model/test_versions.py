"""Model versions: immutable files, one champion a sensor (the registry's view and the bank
follow it), challengers compared and promoted through gates, rollback to exact bytes, and
role changes that stay consistent when they race."""

from __future__ import annotations

import hashlib
import threading
from datetime import UTC, datetime

import numpy as np
import pytest

from fleetscore.core.hours import Hour
from fleetscore.core.sensors import Sensor
from fleetscore.errors import AlreadyExists
from fleetscore.model.bank import rebuild_bank
from fleetscore.model.compare import Gates, compare, with_challengers
from fleetscore.model.registry import read_manifest, save_model, stored_model_bytes
from fleetscore.model.training import reference_model, train
from fleetscore.model.versions import (
    add_version,
    migrate,
    read_history,
    set_champion,
    version_path,
)
from fleetscore.runs.verify import verify

H0, H1, H2 = (Hour.parse(f"2024-03-01T0{i}") for i in range(3))
S = Sensor("1", "1")


@pytest.fixture
def versioned(local_store, fleet_csv):
    from fleetscore.data.ingest import ingest_file

    ingest_file(local_store, fleet_csv)
    train(local_store, estimator="ocsvm", until=H0)  # v1 champions
    train(local_store, estimator="ocsvm", until=H0, role="challenger", nu=0.3)  # v2 challengers
    return local_store


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _bank_sha(store, sensor: Sensor) -> str:
    """The sha256 of the model bytes the bank compiled the sensor's entry from."""
    import json

    from fleetscore.model.bank import INDEX_PATH, Bank

    for shard in json.loads(store.get(INDEX_PATH))["shards"]:
        bank = Bank.decode(store.get(shard["path"]))
        keys = bank.ids.to_pylist()
        if str(sensor) in keys:
            return str(bank.sha[keys.index(str(sensor))])
    raise AssertionError(f"{sensor} is not in the bank")


def test_train_makes_champions_and_challengers_as_versions(versioned):
    history = read_history(versioned, S)
    assert [(v.number, v.role) for v in history.versions] == [(1, "champion"), (2, "challenger")]
    assert [e.by for e in history.events] == ["train", "train"]
    # The champion view is version 1's bytes; the challenger changed nothing that scores.
    assert _sha(stored_model_bytes(versioned, S)) == history.champion.sha256
    assert read_manifest(versioned, S).version == 1
    for v in history.versions:
        assert _sha(versioned.get(version_path(S, v.number))) == v.sha256


def test_a_versions_bytes_never_change(versioned):
    before = {v.number: versioned.get(version_path(S, v.number))
              for v in read_history(versioned, S).versions}
    with pytest.raises(AlreadyExists):
        versioned.put(version_path(S, 1), b"something else", overwrite=False)
    set_champion(versioned, S, 2, by="promote")
    set_champion(versioned, S, 1, by="rollback")
    train(versioned, estimator="ocsvm", until=H0, sensors={S})  # v3
    after = {v.number: versioned.get(version_path(S, v.number))
             for v in read_history(versioned, S).versions}
    assert {n: after[n] for n in before} == before and sorted(after) == [1, 2, 3]
    assert verify(versioned)[1] == []


@pytest.mark.reliability("R87")
def test_a_save_interrupted_after_its_version_file_does_not_block_the_next(versioned):
    """A save killed between its version file and its history left v3's file, which no
    history names: the next training archives its model as v4, and v3's file stays."""
    orphan = b"the bytes of a save that never finished"
    versioned.put(version_path(S, 3), orphan, overwrite=False)
    result = train(versioned, estimator="ocsvm", until=H0, sensors={S})
    assert [m.version for m in result.trained] == [4]
    history = read_history(versioned, S)
    assert [v.number for v in history.versions] == [1, 2, 4]
    assert history.champion.number == 4
    assert versioned.get(version_path(S, 3)) == orphan
    assert _sha(versioned.get(version_path(S, 4))) == read_manifest(versioned, S).sha256


def test_rollback_restores_the_exact_champion_and_the_bank_follows(versioned):
    v1 = read_history(versioned, S).version(1)
    set_champion(versioned, S, 2, by="promote")
    rebuild_bank(versioned)
    assert _bank_sha(versioned, S) == read_history(versioned, S).version(2).sha256
    history = read_history(versioned, S)
    assert history.previous_champion().number == 1
    set_champion(versioned, S, history.previous_champion().number, by="rollback")
    rebuild_bank(versioned)
    assert _sha(stored_model_bytes(versioned, S)) == v1.sha256
    assert _bank_sha(versioned, S) == v1.sha256
    assert read_history(versioned, S).champion.number == 1
    assert [e.by for e in read_history(versioned, S).events][-2:] == ["promote", "rollback"]


def test_promote_passes_only_the_sensors_that_meet_the_gates(versioned):
    comparisons = compare(versioned, with_challengers(versioned), [H1, H2])
    assert [c.sensor for c in comparisons] == ["1/1", "1/2", "dev_a/t.x"]
    for c in comparisons:  # nu=0.3 flags about a third of the windows; the champions ~nothing
        assert c.windows == 120 and c.challenger_rate > c.champion_rate
        assert c.agreement == pytest.approx(1 - abs(c.challenger_rate - c.champion_rate), abs=0.2)
    rates = sorted(c.challenger_rate for c in comparisons)
    gates = Gates(max_anomaly_rate=(rates[0] + rates[1]) / 2)
    passing = [c.sensor for c in comparisons if gates.why_not(c) is None]
    assert len(passing) == 1
    failing = [gates.why_not(c) for c in comparisons if gates.why_not(c) is not None]
    assert all(w.startswith("flags ") and "more than" in w for w in failing)
    assert Gates(min_agreement=1.01).why_not(comparisons[0]).startswith("agrees with the champion")
    assert Gates().why_not(compare(versioned, with_challengers(versioned), [])[0]) == \
        "no windows in the range to compare on"


@pytest.mark.reliability("R83")
def test_concurrent_role_changes_never_leave_the_view_and_history_apart(versioned):
    """Two promoters racing, each setting its own version many times: the lock serializes
    them, so after every change the champion view is the history's champion."""
    errors = []

    def flip(number: int) -> None:
        try:
            for _ in range(15):
                set_champion(versioned, S, number, by=f"promoter {number}")
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=flip, args=(n,)) for n in (1, 2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    history = read_history(versioned, S)
    assert [v.role for v in history.versions].count("champion") == 1
    assert _sha(stored_model_bytes(versioned, S)) == history.champion.sha256
    assert len(history.events) == 2 + 30
    assert not versioned.exists("versions/lock.json")


@pytest.mark.reliability("R83")
def test_a_promote_during_a_run_never_scores_from_the_old_champions_entry(versioned):
    """A run planned and its bank current, then a promote (no bank rebuild yet), then the
    unit scores: the promoted sensor's rows are the new champion's, never the stale compiled
    copy of the old one; the other sensors keep the bank's."""
    from datetime import timedelta

    import pyarrow.compute as pc

    from fleetscore.compute.local import SequentialBackend
    from fleetscore.data.windows import read_points
    from fleetscore.model.registry import load_model, loads_model
    from fleetscore.runs import lifecycle
    from fleetscore.runs.engine import ENGINE
    from fleetscore.scoring.score import predict_labels

    rebuild_bank(versioned)
    now = datetime.now(UTC)
    ticket = lifecycle.begin(versioned, H1, run_id="r1", now=now, deadline=now + timedelta(hours=1))
    set_champion(versioned, S, 2, by="promote")  # between the plan and the unit
    outcomes = lifecycle.submit(versioned, SequentialBackend(versioned, ENGINE), H1, "r1",
                                ticket.units)
    lifecycle.finalize(versioned, H1, "r1", outcomes, started=now, now=datetime.now(UTC),
                       backend_name="sequential")
    rows = lifecycle.read_predictions(versioned, H1)
    mine = rows.filter(pc.and_(pc.equal(rows["Device"], S.device), pc.equal(rows["Tag"], S.tag)))
    values = read_points(versioned, H1, [S])["Value"].to_numpy()
    labels, _ = predict_labels(load_model(versioned, S), values)
    assert read_history(versioned, S).champion.number == 2
    assert mine["Prediction"].to_pylist() == labels.tolist()
    old, _ = predict_labels(loads_model(versioned.get(version_path(S, 1)), "v1"), values)
    assert labels.tolist() != old.tolist()  # the two champions disagree: the test can tell


def test_a_store_from_before_versions_keeps_working_and_migrates(local_store):
    rng = np.random.default_rng(0)
    model = reference_model().fit(rng.normal(10, 1, (200, 1)))
    save_model(local_store, S, model, source="before versions")
    save_model(local_store, S, model, source="before versions, again")  # manifest version 2
    history = read_history(local_store, S)
    assert not history.archived and [(v.number, v.role) for v in history.versions] == [
        (2, "champion")]
    assert migrate(local_store, [S], now=datetime.now(UTC)) == 1
    assert migrate(local_store, [S]) == 0
    archived = read_history(local_store, S)
    assert archived.archived and archived.champion.sha256 == read_manifest(local_store, S).sha256
    data = stored_model_bytes(local_store, S)
    v3 = add_version(local_store, S, data, estimator="x", source="again", trained_on=None,
                     role="challenger", by="test")
    assert v3.number == 3 and read_history(local_store, S).challenger.number == 3


@pytest.mark.reliability("R84")
def test_a_damaged_version_is_named_and_never_made_champion(versioned):
    from fleetscore.errors import ModelError

    versioned.put(version_path(S, 2), b"not the challenger any more")
    problems = {p.path: p.reason for p in verify(versioned)[1]}
    assert "changed or truncated after it was written" in problems[version_path(S, 2)]
    before = stored_model_bytes(versioned, S)
    with pytest.raises(ModelError, match=f"version file {version_path(S, 2)} does not match"):
        set_champion(versioned, S, 2, by="promote")
    assert stored_model_bytes(versioned, S) == before
    assert read_history(versioned, S).champion.number == 1


def test_verify_names_a_challenger_pointer_that_disagrees_with_its_history(versioned):
    from fleetscore.model.versions import challenger_path

    assert verify(versioned)[1] == []
    versioned.delete(challenger_path(S))  # a crash between the history and its pointer
    versioned.put(challenger_path(Sensor("1", "2")), b"{not json")
    problems = {p.path: p.reason for p in verify(versioned)[1]}
    assert set(problems) == {challenger_path(S), challenger_path(Sensor("1", "2"))}
    assert "does not match the challenger its version history names (v2)" in \
        problems[challenger_path(S)]
    assert "is damaged" in problems[challenger_path(Sensor("1", "2"))]
    set_champion(versioned, S, 2, by="promote")  # the next role change rewrites it
    assert challenger_path(S) not in {p.path for p in verify(versioned)[1]}


def test_a_long_series_of_changes_keeps_the_models_lock(local_store):
    """``keep`` renews the lock once a quarter of its time has passed: a promote or rollback
    of a whole fleet, sensor by sensor, never lets it lapse for another command to take."""
    import time
    from datetime import timedelta

    from fleetscore.errors import Conflict
    from fleetscore.model.versions import ModelsLock

    with ModelsLock(local_store, ttl=timedelta(seconds=1.2)) as lock:
        for _ in range(6):  # 1.8 s of changes: longer than the lock's time
            time.sleep(0.3)
            lock.keep()
        with pytest.raises(Conflict):
            with ModelsLock(local_store, wait_s=0):
                pass
        lock.renew()  # still ours
