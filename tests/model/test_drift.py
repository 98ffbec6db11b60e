"""Drift: a sensor given a level shift is flagged, the others are not; train --drifted refits
only the flagged one, as a challenger."""

from __future__ import annotations

import json

from fleetscore.core.hours import Hour
from fleetscore.data.ingest import ingest_file
from fleetscore.model.drift import drift
from fleetscore.model.training import train
from fleetscore.model.versions import read_history
from tests.cli.conftest import fleetscore
from tests.conftest import minute_readings, write_readings

H0, H2 = Hour.parse("2024-03-01T00"), Hour.parse("2024-03-01T02")


def _fleet(tmp_path):
    rows = []
    for i, (device, tag) in enumerate([("A", "x"), ("A", "y"), ("B", "x"), ("C", "x")]):
        for k, (ts, d, t, v) in enumerate(minute_readings(device, tag, "2024-03-01 00:00:00",
                                                          180, seed=i, level=20.0)):
            shifted = (d, t) == ("B", "x") and k // 4 >= 60  # from 01:00: +4 noise widths
            rows.append((ts, d, t, v + 4.0 if shifted else v))
    return write_readings(tmp_path / "drift.csv", sorted(rows))


def test_a_level_shift_is_drift_and_noise_is_not(local_store, tmp_path):
    ingest_file(local_store, _fleet(tmp_path))
    train(local_store, until=H0)
    found = {d.sensor: d for d in drift(local_store, [H2])}
    assert [s for s, d in found.items() if d.drifted] == ["B/x"]
    assert found["B/x"].statistic > 0.9 and found["B/x"].p_value < 1e-6
    assert all(d.statistic < 0.5 for s, d in found.items() if s != "B/x")
    assert (found["A/x"].trained_windows, found["A/x"].recent_windows) == (60, 60)


def test_train_challenger_drifted_refits_only_the_drifted_sensor(local_store, tmp_path):
    ingest_file(local_store, _fleet(tmp_path))
    store = str(local_store.root)
    fleetscore("train", "--store", store, "--until", "2024-03-01T00")
    shown = fleetscore("models", "drift", "--store", store, "--from", "2024-03-01T02", "--to",
                       "2024-03-01T02", "--json")
    assert shown.returncode == 3
    assert [d["sensor"] for d in json.loads(shown.stdout)["sensors"] if d["drifted"]] == ["B/x"]
    refit = fleetscore("train", "--store", store, "--challenger", "--drifted")
    assert refit.returncode == 0, refit.stderr
    assert "trained 1 challenger" in refit.stdout
    from fleetscore.core.sensors import Sensor

    roles = {s: [v.role for v in read_history(local_store, s).versions]
             for s in [Sensor.parse(d.sensor) for d in drift(local_store, [H2])]}
    assert roles == {Sensor("A", "x"): ["champion"], Sensor("A", "y"): ["champion"],
                     Sensor("B", "x"): ["champion", "challenger"], Sensor("C", "x"): ["champion"]}
