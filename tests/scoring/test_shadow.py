"""Shadow scoring: each sensor's challenger scored beside its champion, written under
``shadow/``, never changing a visible row."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pyarrow.compute as pc
import pytest

from fleetscore.compute.local import SequentialBackend
from fleetscore.core.sensors import Sensor
from fleetscore.data.predictions import SHADOW_SCHEMA, decode
from fleetscore.data.windows import read_points
from fleetscore.model.bank import rebuild_bank
from fleetscore.model.challengers import load_version, read_pointers, rebuild_challengers
from fleetscore.model.training import train
from fleetscore.model.versions import read_history, set_champion, version_path
from fleetscore.runs.engine import ENGINE
from fleetscore.runs.lifecycle import read_manifest, run_hour
from tests.conftest import predictions_snapshot


def _challengers(store, first, **kw) -> None:
    train(store, estimator="ocsvm", until=first, role="challenger", nu=0.2, **kw)
    rebuild_bank(store)
    rebuild_challengers(store)


def _shadow(store_dir: Path, hour):
    files = sorted((store_dir / "shadow" / hour.path).glob("*.csv"))
    return files, [decode(f.read_bytes(), f.name, SHADOW_SCHEMA) for f in files]


def _digest(rows: list[bytes]) -> str:
    return hashlib.sha256(b"\n".join(rows)).hexdigest()


def _without_challengers(store, hour) -> str:
    """The digest of the hour's rows scored with the bank and no challenger."""
    rebuild_bank(store)
    run_hour(store, hour, SequentialBackend(store, ENGINE), unit_size=30)
    return _digest(predictions_snapshot(store.root))


def test_visible_predictions_are_identical_with_challengers(fleet_store, fleet_template):
    hour = fleet_template["hour"]
    clean = _without_challengers(fleet_store, hour)
    _challengers(fleet_store, hour - 1)
    summary = run_hour(fleet_store, hour, SequentialBackend(fleet_store, ENGINE), unit_size=30)
    assert summary.status == "succeeded"
    manifest = read_manifest(fleet_store, hour)
    assert _digest(predictions_snapshot(fleet_store.root)) == clean
    files, tables = _shadow(Path(fleet_store.root), hour)
    assert len(files) == 4  # one a unit
    rows = sum(t.num_rows for t in tables)
    visible = len(fleet_template["clean"])
    assert rows == visible
    assert {v for t in tables for v in t["Version"].to_pylist()} == {2}
    assert [(u.challengers, u.failed, u.error) for u in manifest.shadow] == [(30, (), None)] * 4
    assert {u.sha256 for u in manifest.shadow} == {
        hashlib.sha256(f.read_bytes()).hexdigest() for f in files}


def test_shadow_labels_are_the_challengers_own(fleet_store, fleet_template):
    hour = fleet_template["hour"]
    _challengers(fleet_store, hour - 1)
    run_hour(fleet_store, hour, SequentialBackend(fleet_store, ENGINE), unit_size=30)
    _, tables = _shadow(Path(fleet_store.root), hour)
    table = tables[0]
    pointers = {p.key: p for p in read_pointers(fleet_store)}
    for i in (0, table.num_rows - 1):
        sensor = Sensor(table["Device"][i].as_py(), table["Tag"][i].as_py())
        rows = table.filter(pc.and_(pc.equal(table["Device"], sensor.device),
                                    pc.equal(table["Tag"], sensor.tag)))
        model = load_version(fleet_store, pointers[str(sensor)]).estimator
        points = read_points(fleet_store, hour, [sensor])
        expected = (model.predict(points["Value"].to_numpy().reshape(-1, 1)) == -1).astype(int)
        assert rows["Prediction"].to_pylist() == expected.tolist()
        assert np.array_equal(rows["Val"].to_numpy(), points["Value"].to_numpy())


def test_a_broken_challenger_fails_alone_in_the_shadow(fleet_store, fleet_template):
    hour = fleet_template["hour"]
    clean = _without_challengers(fleet_store, hour)
    _challengers(fleet_store, hour - 1)
    pointers = read_pointers(fleet_store)
    broken = pointers[0]
    (Path(fleet_store.root) / version_path(broken.sensor, broken.version)).write_bytes(b"junk")
    # Recompiled without it: the bank's shard is rebuilt from the (now damaged) bytes.
    for shard in (Path(fleet_store.root) / "bank" / "challengers").glob("*.npz"):
        shard.unlink()
    rebuild_challengers(fleet_store)
    summary = run_hour(fleet_store, hour, SequentialBackend(fleet_store, ENGINE), unit_size=30)
    assert summary.status == "succeeded"
    manifest = read_manifest(fleet_store, hour)
    assert _digest(predictions_snapshot(fleet_store.root)) == clean
    _, tables = _shadow(Path(fleet_store.root), hour)
    shadowed = {f"{d}/{t}" for tb in tables for d, t in zip(tb["Device"].to_pylist(),
                                                              tb["Tag"].to_pylist(), strict=True)}
    assert broken.key not in shadowed and len(shadowed) == len(pointers) - 1
    failed = [f for u in manifest.shadow for f in u.failed]
    assert [f.sensor for f in failed] == [broken.key]
    assert "does not match its sha256" in failed[0].message


def test_promoted_challengers_leave_no_shadow_behind(fleet_store, fleet_template):
    hour = fleet_template["hour"]
    _challengers(fleet_store, hour - 1)
    run_hour(fleet_store, hour, SequentialBackend(fleet_store, ENGINE), unit_size=30)
    assert _shadow(Path(fleet_store.root), hour)[0]
    for pointer in read_pointers(fleet_store):
        set_champion(fleet_store, pointer.sensor, pointer.version, by="test")
    assert read_pointers(fleet_store) == []
    promoted = read_history(fleet_store, pointer.sensor)
    assert promoted.challenger is None and promoted.champion.number == pointer.version
    rebuild_bank(fleet_store)
    assert rebuild_challengers(fleet_store).challengers == 0
    run_hour(fleet_store, hour, SequentialBackend(fleet_store, ENGINE), unit_size=30)
    assert _shadow(Path(fleet_store.root), hour)[0] == []


def test_unchanged_challengers_keep_their_shards(fleet_store, fleet_template):
    _challengers(fleet_store, fleet_template["hour"] - 1)
    again = rebuild_challengers(fleet_store)
    assert (again.shards_written, again.shards_kept) == (0, 1)
    assert again.compiled == again.challengers == 120


def test_a_backfill_scores_challengers_for_every_hour(fleet_store, fleet_template):
    from fleetscore.runs.ranges import run_range

    hour = fleet_template["hour"]
    rebuild_bank(fleet_store)
    run_range(fleet_store, [hour - 1, hour], SequentialBackend(fleet_store, ENGINE))
    clean = _digest(predictions_snapshot(fleet_store.root))
    _challengers(fleet_store, hour - 1)
    run_range(fleet_store, [hour - 1, hour], SequentialBackend(fleet_store, ENGINE))
    assert _digest(predictions_snapshot(fleet_store.root)) == clean
    for h in (hour - 1, hour):
        files, tables = _shadow(Path(fleet_store.root), h)
        assert sum(t.num_rows for t in tables) == 120 * 60
        [unit] = read_manifest(fleet_store, h).shadow
        assert unit.challengers == 120 and unit.sha256 == hashlib.sha256(
            files[0].read_bytes()).hexdigest()


def test_isolation_forest_challengers_are_compiled_and_scored_as_scikit_learn(fleet_store,
                                                                             fleet_template):
    hour = fleet_template["hour"]
    train(fleet_store, until=hour - 1, role="challenger", estimator="iforest")
    rebuild_bank(fleet_store)
    stats = rebuild_challengers(fleet_store)
    assert stats.challengers == 120 and stats.compiled >= 100  # constant sensors stay plain
    run_hour(fleet_store, hour, SequentialBackend(fleet_store, ENGINE), unit_size=30)
    _, tables = _shadow(Path(fleet_store.root), hour)
    pointers = {p.key: p for p in read_pointers(fleet_store)}
    table = tables[1]
    for i in range(0, table.num_rows, 60 * 7):
        sensor = Sensor(table["Device"][i].as_py(), table["Tag"][i].as_py())
        rows = table.filter(pc.and_(pc.equal(table["Device"], sensor.device),
                                    pc.equal(table["Tag"], sensor.tag)))
        model = load_version(fleet_store, pointers[str(sensor)]).estimator
        values = read_points(fleet_store, hour, [sensor])["Value"].to_numpy().reshape(-1, 1)
        assert rows["Prediction"].to_pylist() == (model.predict(values) == -1).astype(
            int).tolist()


def test_a_champion_bank_rebuild_keeps_the_challenger_shards(fleet_store, fleet_template):
    _challengers(fleet_store, fleet_template["hour"] - 1)
    shards = sorted((Path(fleet_store.root) / "bank" / "challengers").glob("*.npz"))
    assert shards
    rebuild_bank(fleet_store)  # a promotion elsewhere, a `models bank`: the champions only
    assert sorted((Path(fleet_store.root) / "bank" / "challengers").glob("*.npz")) == shards
    again = rebuild_challengers(fleet_store)
    assert (again.shards_written, again.shards_kept) == (0, 1)


@pytest.mark.reliability("R88")
def test_two_challenger_bank_rebuilds_at_once_leave_no_index_naming_a_gone_shard(
        fleet_store, fleet_template, monkeypatch):
    """Rebuild X writes its first shard; meanwhile another command promotes a challenger and
    rebuilds Y whole, dropping the shard X just wrote. X's index must not name it."""
    from fleetscore.model.challengers import INDEX, load_challengers
    from fleetscore.storage import LocalStore

    train(fleet_store, estimator="ocsvm", until=fleet_template["hour"] - 1, role="challenger",
          nu=0.2)
    first = read_pointers(fleet_store)[0].sensor
    real_put = fleet_store.put
    meanwhile = []

    def put(path, data, **kw):
        real_put(path, data, **kw)
        if path.endswith(".npz") and not meanwhile:
            meanwhile.append(path)
            set_champion(fleet_store, first, 2, by="promote")
            rebuild_challengers(LocalStore(fleet_store.root), shard_sensors=8)

    monkeypatch.setattr(fleet_store, "put", put)
    rebuild_challengers(fleet_store, shard_sensors=8)
    import json

    named = [s["path"] for s in json.loads(fleet_store.get(INDEX))["shards"]]
    assert meanwhile and all(fleet_store.exists(p) for p in named)
    pointers = read_pointers(fleet_store)
    found = load_challengers(fleet_store, sorted((p.sensor.device, p.sensor.tag)
                                                 for p in pointers))
    assert len(found.pointers) == len(pointers) == 119
