"""No misleading outcome: training nothing, scoring with no model, a range far from the data,
an interrupted range and a store path that is a file are each said plainly, with their own
exit code (docs/reliability.md R48-R51)."""

from __future__ import annotations

import json

import pytest

from tests.conftest import minute_readings, write_readings


@pytest.fixture
def sparse_store(tmp_path, cli):
    """Two sensors with 3 one-minute windows each: too few points to train on."""
    rows = minute_readings("d1", "t1", "2024-03-01 00:00:00", 3) + \
        minute_readings("d1", "t2", "2024-03-01 00:00:00", 3, seed=1)
    csv = write_readings(tmp_path / "sparse.csv", sorted(rows))
    store = str(tmp_path / "s")
    assert cli("ingest", str(csv), "--store", store)[0] == 0
    return store


@pytest.mark.reliability("R48")
def test_training_nothing_is_an_error_that_says_why(sparse_store, cli):
    code, out, err = cli("train", "--store", sparse_store)
    assert code == 2, (out, err)
    assert "trained no model" in err and "d1/t1: only 3 points" in err and "at least 10" in err
    assert "Traceback" not in out + err


@pytest.mark.reliability("R48")
def test_a_run_with_no_model_for_any_sensor_is_no_data_with_the_reason(sparse_store, cli):
    code, out, err = cli("run", "--all", "--store", sparse_store, "--backend", "sequential",
                         "--json")
    assert code == 6, (out, err)
    assert [r["status"] for r in json.loads(out)["runs"]] == ["no_data"]
    code, out, err = cli("run", "--all", "--force", "--store", sparse_store,
                         "--backend", "sequential")
    assert code == 6 and "2 sensors with data but no model" in err, err


@pytest.mark.reliability("R51")
def test_ingest_into_a_store_path_that_is_a_file_is_a_usage_error(tmp_path, fleet_csv, cli):
    target = tmp_path / "afile"
    target.write_text("mine")
    code, out, err = cli("ingest", str(fleet_csv), "--store", str(target))
    assert code == 2 and "is a file, not a store directory" in err, (out, err)
    assert target.read_text() == "mine"


@pytest.mark.reliability("R51")
def test_a_failed_first_ingest_leaves_no_empty_store(tmp_path, cli):
    bad = tmp_path / "bad.csv"
    bad.write_text("bad,header\n")
    store = tmp_path / "new"
    code, out, err = cli("ingest", str(bad), "--store", str(store))
    assert code == 2 and "wrong header" in err
    assert not store.exists()


@pytest.fixture
def scored_store(trained_store):
    """tests/conftest.py's three sensors, hours 2024-03-01T00..02 with data."""
    return str(trained_store.root)


@pytest.mark.reliability("R49")
def test_a_range_far_beyond_the_data_writes_no_empty_manifests(scored_store, cli):
    from pathlib import Path

    code, out, err = cli("run", "--from", "2024-03-01T00", "--to", "2025-03-01T03",
                         "--store", scored_store, "--backend", "sequential", "--json")
    assert code == 0, (out, err)
    assert "skipped 8,761 hours with no data and no earlier run" in err
    assert "2024-03-01T00 .. 2024-03-01T02" in err
    assert sorted(p.name for p in (Path(scored_store) / "runs").glob("*.json")) == [
        "2024-03-01T00.json", "2024-03-01T01.json", "2024-03-01T02.json"]
    code, out, err = cli("run", "--from", "2023-03-01T00", "--to", "2023-03-02T00",
                         "--store", scored_store, "--backend", "sequential")
    assert code == 6 and "no hour of 2023-03-01T00 .. 2023-03-02T00 has data" in err, err
    assert len(list((Path(scored_store) / "runs").glob("*.json"))) == 3


@pytest.mark.reliability("R50")
def test_ctrl_c_during_a_range_says_what_finished(scored_store, cli, monkeypatch):
    from fleetscore.runs import ranges

    real = ranges.run_range

    def interrupted_after_one(store, hours, backend, **options):
        real(store, hours[:1], backend, **options)
        raise KeyboardInterrupt

    monkeypatch.setattr(ranges, "run_range", interrupted_after_one)
    code, out, err = cli("run", "--all", "--store", scored_store, "--backend", "sequential")
    assert code == 130, (out, err)
    assert "interrupted: 1 of 3 hours finished; not finished: 2024-03-01T01, 2024-03-01T02" \
        in err, err
