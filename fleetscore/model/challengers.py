"""The challenger bank: every sensor's challenger compiled for shadow scoring.

A challenger is found from its pointer (``versions/{Device}/{Tag}.challenger.json``: version
number and sha256, written with the history under the models lock), so one listing of
versions/ finds them all. ``rebuild_challengers`` compiles them into shards under
``bank/challengers/``, each named by the hash of its sensors' (version, sha256) list: a version
never changes, so a shard whose name matches is reused, and a changed challenger always makes a
new shard. The index ``bank/challengers/index.json`` names the shards; a unit reads only the
shards of its sensors (``load_challengers``).

Each shard lists every challenger of its sensors with its version, compiled or not: the
compiled ones are scored vectorized as champions are, the rest by scikit-learn from the
version's bytes (checked against the pointer's sha256). A run between a role change and the
next rebuild shadow-scores the challenger the index still names; the shadow rows carry the
version number that made them, so no row is ever attributed to another model.
"""

from __future__ import annotations

import bisect
import hashlib
import io
import json
import zipfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from fleetscore.core.sensor_codes import sensor_keys
from fleetscore.core.sensors import Sensor
from fleetscore.errors import Conflict, ModelError, NotFound
from fleetscore.model.bank import (
    BANK_FOLDER,
    BANK_FORMAT,
    REBUILD_ROUNDS,
    SHARD_SENSORS,
    Bank,
    Verdict,
    compile_any,
    encode_shard,
    take_fresh,
)
from fleetscore.model.features import Detector
from fleetscore.model.registry import check_estimator, loads_model
from fleetscore.model.versions import CHALLENGER_SUFFIX, VERSIONS, version_path
from fleetscore.storage import Store
from fleetscore.storage.base import get_many

FOLDER = f"{BANK_FOLDER}/challengers"
INDEX = f"{FOLDER}/index.json"
FORMAT = 1


@dataclass(frozen=True, order=True)
class Pointer:
    """A sensor's challenger: its version number and the sha256 of that version's bytes."""

    key: str  # Device/Tag
    version: int
    sha256: str
    features: tuple[str, ...] = ()  # the version's derived features (model/features.py)

    @property
    def sensor(self) -> Sensor:
        return Sensor.unchecked(*self.key.split("/", 1))

    @classmethod
    def decode(cls, key: str, data: bytes) -> Pointer | None:
        """None for a damaged pointer: that sensor is not shadow-scored, and verify says so."""
        try:
            body = json.loads(data)
            return cls(key, int(body["version"]), str(body["sha256"]),
                       tuple(str(f) for f in body.get("features", ())))
        except (ValueError, KeyError, TypeError, RecursionError):
            return None


def read_pointers(store: Store) -> list[Pointer]:
    """Every sensor's challenger, sorted by sensor: one listing of versions/."""
    paths = [p for p in store.list(VERSIONS) if p.endswith(CHALLENGER_SUFFIX)]
    keys = [p[len(VERSIONS) + 1:-len(CHALLENGER_SUFFIX)] for p in paths]
    found = [Pointer.decode(k, d) for k, d in zip(keys, get_many(store, paths, missing_ok=True),
                                                  strict=True) if d is not None]
    return sorted(p for p in found if p is not None)


def load_version(store: Store, pointer: Pointer) -> Detector:
    """The challenger's estimator and features, from its version's bytes checked against the
    pointer."""
    name = f"sensor {pointer.key} challenger v{pointer.version}"
    try:
        data = store.get(version_path(pointer.sensor, pointer.version))
    except NotFound as exc:
        raise ModelError(f"{name}: version file missing") from exc
    if hashlib.sha256(data).hexdigest() != pointer.sha256:
        raise ModelError(f"{name}: version file does not match its sha256")
    estimator = loads_model(data, name)
    check_estimator(estimator, name, pointer.features)
    return Detector(estimator, pointer.features)


# --- shards -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class ChallengerStats:
    challengers: int
    compiled: int
    shards_written: int
    shards_kept: int


def _shard_path(group: Sequence[Pointer]) -> str:
    # The bank's format too: a shard of an older bank format is rebuilt, never misread.
    text = f"challengers {FORMAT} bank {BANK_FORMAT}\n" + "\n".join(
        f"{p.key}:{p.version}:{p.sha256}" for p in group)
    return f"{FOLDER}/shard-{hashlib.sha256(text.encode()).hexdigest()[:24]}.npz"


def _compile(store: Store, pointer: Pointer) -> Verdict:
    fresh = take_fresh(store, pointer.sensor, pointer.sha256, pointer.features)
    if fresh is not None:
        return fresh
    try:
        return compile_any(load_version(store, pointer).estimator)
    except ModelError:
        return Verdict(None, "cannot be loaded")  # the plain path names it when it scores
    except Exception:  # noqa: BLE001 - a model's own bug: the plain path names it
        return Verdict(None, "cannot be compiled")


def _encode(store: Store, group: Sequence[Pointer]) -> tuple[bytes, int]:
    verdicts = [(p, _compile(store, p)) for p in group]
    entries = [(p.sensor, p.sha256, v.compiled) for p, v in verdicts if v.compiled is not None]
    forests = [(p.sensor, p.sha256, v.forest) for p, v in verdicts if v.forest is not None]
    data = encode_shard(entries, forests=forests, extra={
        "pointer_key": np.array([p.key for p in group], dtype="U130"),
        "pointer_version": np.array([p.version for p in group], dtype=np.int64),
        "pointer_sha256": np.array([p.sha256 for p in group], dtype="U64"),
        "pointer_features": np.array([",".join(p.features) for p in group], dtype="U64")})
    return data, len(entries) + len(forests)


def rebuild_challengers(store: Store, *, shard_sensors: int = SHARD_SENSORS) -> ChallengerStats:
    """Compile every challenger into the challenger bank, reusing the shards that hold the same
    versions, then write the index and drop the shards it no longer names.

    Two commands can rebuild at once (each rebuilds after its models lock is released): the
    index is written only over the version this rebuild read first, and a rebuild that lost
    that race, or whose shards the other dropped, starts again. So the index never names a
    shard that is gone."""
    for _ in range(REBUILD_ROUNDS):
        try:
            version: str | None = store.get_versioned(INDEX)[1]
        except NotFound:
            version = None
        existing = set(store.list(FOLDER))
        stats, body, live = _build_shards(store, read_pointers(store), existing, shard_sensors)
        try:
            store.put(INDEX, body, overwrite=version is not None, if_match=version)
        except (Conflict, NotFound):
            continue  # another rebuild wrote the index meanwhile: this one is stale
        for path in existing - live:
            if path.endswith(".npz"):
                store.delete(path)
        if all(store.exists(path) for path in live):
            return stats
    return stats


def _build_shards(store: Store, pointers: list[Pointer], existing: set[str], shard_sensors: int
                  ) -> tuple[ChallengerStats, bytes, set[str]]:
    """The shards of these challengers (those not in ``existing`` written), their index's
    bytes and paths."""
    shards, written, compiled = [], 0, 0
    for start in range(0, len(pointers), shard_sensors):
        group = pointers[start:start + shard_sensors]
        path = _shard_path(group)
        if path in existing:
            count = _compiled_count(store, path)
        else:
            data, count = _encode(store, group)
            store.put(path, data)
            written += 1
        compiled += count
        shards.append({"path": path, "first": group[0].key, "last": group[-1].key,
                       "challengers": len(group), "compiled": count})
    body = json.dumps({"format": FORMAT, "shards": shards}, indent=1).encode()
    stats = ChallengerStats(len(pointers), compiled, written, len(shards) - written)
    return stats, body, {s["path"] for s in shards}


def _compiled_count(store: Store, path: str) -> int:
    try:
        bank = Bank.decode(store.get(path), sha=False)
    except (NotFound, ValueError, KeyError, OSError, zipfile.BadZipFile):
        return 0
    return len(bank.ids) + len(bank.forests.ids)


# --- a unit's challengers ---------------------------------------------------------------------


@dataclass(frozen=True)
class Challengers:
    """A unit's challengers: ``pointers`` (all of them, sorted), ``bank`` (the compiled ones)."""

    pointers: tuple[Pointer, ...] = ()
    bank: Bank = field(default_factory=Bank.empty)

    def __bool__(self) -> bool:
        return bool(self.pointers)

    @property
    def sensors(self) -> list[Sensor]:
        return [p.sensor for p in self.pointers]

    def versions_of(self, keys: pa.Array) -> np.ndarray:
        """Each ``Device/Tag`` key's challenger version (keys must be challengers')."""
        where = pc.index_in(keys, value_set=pa.array([p.key for p in self.pointers]))
        return np.array([p.version for p in self.pointers], np.int64)[where.to_numpy()]

    def of(self, sensors: Sequence[Sensor]) -> Challengers:
        """Only the challengers of ``sensors``."""
        keys = {f"{s.device}/{s.tag}" for s in sensors}
        if all(p.key in keys for p in self.pointers):
            return self
        mine = tuple(p for p in self.pointers if p.key in keys)
        at = self.bank.index(pa.array([p.key for p in mine], pa.string()))
        return Challengers(mine, self.bank.select(at[at >= 0]))

    def pointer(self, sensor: Sensor) -> Pointer:
        key = f"{sensor.device}/{sensor.tag}"
        return next(p for p in self.pointers if p.key == key)


def _read_index(store: Store) -> list[dict]:
    try:
        body = json.loads(store.get(INDEX))
    except (NotFound, ValueError, RecursionError):
        return []  # no challengers (or a damaged index: verify names it)
    shards = body.get("shards") if isinstance(body, dict) else None
    if body.get("format") != FORMAT or not isinstance(shards, list):
        return []
    return [s for s in shards if isinstance(s, dict) and {"path", "first", "last"} <= s.keys()]


def load_challengers(store: Store, pairs: Iterable[tuple[str, str]]) -> Challengers:
    """The challengers of the given sorted (device, tag) pairs: only their shards are read."""
    shards = _read_index(store)
    if not shards:
        return Challengers()
    wanted = list(pairs)
    keys = sensor_keys([d for d, _ in wanted], [t for _, t in wanted])
    pointers: list[Pointer] = []
    banks = []
    for shard in shards:
        first, last = Sensor.parse(shard["first"]), Sensor.parse(shard["last"])
        lo = bisect.bisect_left(wanted, (first.device, first.tag))
        hi = bisect.bisect_right(wanted, (last.device, last.tag))
        if lo == hi:
            continue
        try:
            found, bank = _decode(store.get(shard["path"]), keys[lo:hi])
        except (NotFound, ValueError, KeyError, OSError, zipfile.BadZipFile):
            continue  # a damaged shard: its sensors are not shadow-scored this hour
        pointers.extend(found)
        banks.append(bank)
    return Challengers(tuple(sorted(pointers)), Bank.concat(banks))


def _decode(data: bytes, wanted: pa.Array) -> tuple[list[Pointer], Bank]:
    with np.load(io.BytesIO(data), allow_pickle=False) as z:
        keys, versions, shas = z["pointer_key"], z["pointer_version"], z["pointer_sha256"]
        features = z["pointer_features"] if "pointer_features" in z.files \
            else np.full(len(keys), "", dtype="U1")
    mine = pc.is_in(pa.array(keys.tolist()), value_set=wanted).to_numpy(zero_copy_only=False)
    pointers = [Pointer(k, int(v), s, tuple(f.split(",")) if f else ())
                for k, v, s, f in zip(keys[mine].tolist(), versions[mine], shas[mine].tolist(),
                                      features[mine].tolist(), strict=True)]
    bank = Bank.decode(data)
    by_key = {p.key: p.sha256 for p in pointers}
    # An entry stands only for the version its pointer names (the same shard, so always).
    keep = [i for i, (key, sha) in enumerate(zip(bank.ids.to_pylist(), bank.sha.tolist(),
                                                 strict=True)) if by_key.get(key) == sha]
    return pointers, bank.select(np.array(keep, np.int64))
