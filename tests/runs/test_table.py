"""The hours table behind ``fleetscore runs``: which hours were scored by a champion that is
no longer current."""

from __future__ import annotations

from fleetscore.compute.local import SequentialBackend
from fleetscore.model.bank import newest_champion_time, rebuild_bank
from fleetscore.model.registry import newest_model_time
from fleetscore.model.training import train
from fleetscore.model.versions import read_history, set_champion
from fleetscore.runs.engine import ENGINE
from fleetscore.runs.lifecycle import run_hour
from fleetscore.runs.table import hour_rows, scored_before


def _run(store, hour) -> None:
    run_hour(store, hour, SequentialBackend(store, ENGINE), unit_size=60)


def test_hours_scored_before_a_promote_are_stale_and_only_those(fleet_store, fleet_template):
    hour = fleet_template["hour"]
    rebuild_bank(fleet_store)
    _run(fleet_store, hour - 1)
    _run(fleet_store, hour)
    assert [r.stale for r in hour_rows(fleet_store)] == [False, False]
    train(fleet_store, estimator="ocsvm", until=hour - 1, role="challenger", nu=0.2,
          sensors={s for s in _sensors(fleet_store)[:1]})
    sensor = _sensors(fleet_store)[0]
    set_champion(fleet_store, sensor, read_history(fleet_store, sensor).challenger.number,
                 by="test")
    rebuild_bank(fleet_store)
    assert [r.stale for r in hour_rows(fleet_store)] == [True, True]
    _run(fleet_store, hour)
    assert [r.stale for r in hour_rows(fleet_store)] == [True, False]


def test_the_sealed_bank_knows_the_newest_champion_time(fleet_store, fleet_template):
    rebuild_bank(fleet_store)
    assert newest_champion_time(fleet_store) == newest_model_time(fleet_store) is not None
    sensor = _sensors(fleet_store)[0]
    set_champion(fleet_store, sensor, 1, by="test")  # a save unseals the bank
    assert newest_champion_time(fleet_store) == newest_model_time(fleet_store)
    assert newest_model_time(fleet_store) > fleet_template["hour"].start.isoformat()


def test_scored_before_compares_times():
    assert scored_before("2026-01-01T00:00:00.000001+00:00", "2026-01-01T00:00:00.000002+00:00")
    assert not scored_before("2026-01-01T00:00:00.000003+00:00",
                             "2026-01-01T00:00:00.000002+00:00")
    assert not scored_before("2026-01-01T00:00:00+00:00", None)


def _sensors(store):
    from fleetscore.model.registry import list_models

    return sorted(list_models(store))
