"""Model versions: every model a sensor ever had, immutable, and which one scores.

``versions/{Device}/{Tag}.v{N:06d}.skops`` holds version N's bytes, written once
(create-if-absent) and never changed. ``versions/{Device}/{Tag}.history.json`` lists every
version (number, sha256, created, trained-on range, estimator, source) with its role, and the
events that set the roles (who or what, when):

- the **champion** scores the visible predictions; it is also the registry's champion view
  ``models/{Device}/{Tag}.skops`` (what runs, the bank and ``verify`` read), written with the
  version's exact bytes, so its sha256 is the version's;
- a **challenger** (at most one) waits to be compared and promoted;
- every other version is **retired**, kept for a rollback.

Every change of roles (train, promote, rollback, import) holds the store's models lock
(``versions/lock.json``, create-if-absent with an expiry, taken over only at the version read;
``train`` holds it for its whole run) and writes the champion view before the history, so two
concurrent changes are applied one after the other and the view always ends as the
history's champion.

A store made before versions existed keeps working: a sensor with a champion view and no
history has one implicit version (the view's, its manifest's version number); the first
change of roles archives it, and ``fleetscore models migrate`` archives every sensor's at once.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Any

from fleetscore.core.hours import Hour
from fleetscore.core.sensors import Sensor
from fleetscore.errors import AlreadyExists, Conflict, ModelError, ModelNotFound, NotFound, UsageError
from fleetscore.model.registry import (
    ModelManifest,
    check_estimator,
    check_skops_types,
    describe,
    dumps_model,
    read_manifest,
    sklearn_version,
    stored_model_bytes,
    write_champion,
)
from fleetscore.storage import Store

VERSIONS = "versions"
ROLES = ("champion", "challenger", "retired")
LOCK_TTL = timedelta(minutes=10)  # train renews it after each group of sensors


# A device's folder holds its tags' files side by side (as models/ does): no folder a sensor,
# whose creation would cost more than the files written into it.
def version_path(sensor: Sensor, number: int) -> str:
    return f"{VERSIONS}/{sensor.path}.v{number:06d}.skops"


def history_path(sensor: Sensor) -> str:
    return f"{VERSIONS}/{sensor.path}.history.json"


CHALLENGER_SUFFIX = ".challenger.json"


def challenger_path(sensor: Sensor) -> str:
    """The challenger pointer: present exactly while the history names a challenger, so one
    listing of versions/ finds every challenger without reading a history a sensor."""
    return f"{VERSIONS}/{sensor.path}{CHALLENGER_SUFFIX}"


MODELS_LOCK = f"{VERSIONS}/lock.json"


@dataclass(frozen=True)
class Version:
    number: int
    sha256: str
    created: str
    estimator: str
    source: str
    trained_on: dict[str, str] | None = None
    role: str = "retired"
    features: tuple[str, ...] = ()  # derived features the model sees (model/features.py)


@dataclass(frozen=True)
class Event:
    at: str
    version: int
    role: str
    by: str  # train, import, promote, rollback, migrate, and who asked (a user or the refit)


@dataclass(frozen=True)
class History:
    device: str
    tag: str
    versions: tuple[Version, ...] = ()
    events: tuple[Event, ...] = ()
    archived: bool = True  # False: synthesized from a champion view no history names yet

    @property
    def sensor(self) -> Sensor:
        return Sensor(self.device, self.tag)

    def role(self, role: str) -> Version | None:
        return next((v for v in self.versions if v.role == role), None)

    @property
    def champion(self) -> Version | None:
        return self.role("champion")

    @property
    def challenger(self) -> Version | None:
        return self.role("challenger")

    def version(self, number: int) -> Version:
        for v in self.versions:
            if v.number == number:
                return v
        raise UsageError(f"sensor {self.sensor} has no version {number} (versions: "
                         f"{', '.join(str(v.number) for v in self.versions) or 'none'})")

    def previous_champion(self) -> Version | None:
        """The version that was champion before the current one (a rollback's default)."""
        current = self.champion
        for event in reversed(self.events):
            if event.role == "champion" and current is not None and event.version != current.number:
                return self.version(event.version)
        return None

    def champion_at(self, when: datetime) -> Version | None:
        """The champion as of ``when`` (a rollback of every sensor to a date)."""
        found = None
        for event in self.events:
            if event.role == "champion" and datetime.fromisoformat(event.at) <= when:
                found = event.version
        return self.version(found) if found is not None else None

    def with_role(self, number: int, role: str, by: str, now: datetime) -> History:
        """Version ``number`` takes ``role``; the version that had it (champion, challenger)
        retires."""
        versions = tuple(replace(v, role="retired") if v.role == role and role != "retired"
                         and v.number != number else v for v in self.versions)
        versions = tuple(replace(v, role=role) if v.number == number else v for v in versions)
        return replace(self, versions=versions, events=(*self.events, Event(
            now.isoformat(timespec="microseconds"), number, role, by)))

    def encode(self) -> bytes:
        return json.dumps(asdict(self), indent=1).encode()

    @classmethod
    def decode(cls, data: bytes, path: str) -> History:
        try:
            body = json.loads(data)
            return cls(device=body["device"], tag=body["tag"],
                       versions=tuple(Version(**{**v, "features": tuple(v.get("features", ()))})
                                      for v in body["versions"]),
                       events=tuple(Event(**e) for e in body["events"]))
        except (ValueError, KeyError, TypeError, RecursionError) as exc:
            raise ModelError(f"version history {path} is damaged: {type(exc).__name__}") from exc


def read_history(store: Store, sensor: Sensor) -> History:
    """The sensor's versions; for a sensor from before versions, its champion view as one
    implicit version (not archived); ModelNotFound for a sensor with no model at all."""
    try:
        return History.decode(store.get(history_path(sensor)), history_path(sensor))
    except NotFound:
        pass
    manifest = read_manifest(store, sensor)
    return History(sensor.device, sensor.tag, (_from_manifest(manifest, "champion"),),
                   (Event(manifest.created, manifest.version, "champion", "saved before versions"),),
                   archived=False)


def _from_manifest(manifest: ModelManifest, role: str) -> Version:
    return Version(manifest.version, manifest.sha256, manifest.created, manifest.estimator,
                   manifest.source, manifest.trained_on, role, manifest.features)


def version_bytes(store: Store, sensor: Sensor, version: Version) -> bytes:
    """Version ``version``'s bytes, checked against its recorded sha256."""
    path = version_path(sensor, version.number)
    try:
        data = store.get(path)
    except NotFound as exc:
        raise ModelNotFound(f"sensor {sensor}: version file {path} is missing") from exc
    if hashlib.sha256(data).hexdigest() != version.sha256:
        raise ModelError(f"sensor {sensor}: version file {path} does not match its history "
                         "(damaged or replaced)")
    return data


def add_version(store: Store, sensor: Sensor, data: bytes, *, estimator: str, source: str,
                trained_on: dict[str, str] | None, role: str, by: str,
                now: datetime | None = None, under_lock: bool = False,
                features: tuple[str, ...] = ()) -> Version:
    """Archive new model bytes as the sensor's next version, in ``role`` (champion: also the
    champion view; challenger: the champion is untouched)."""
    check_skops_types(data, str(sensor))
    now = now or datetime.now(UTC)
    with _locked(store, under_lock):
        history = _archived(store, sensor, now)
        number = _archive(store, sensor, data,
                          max((v.number for v in history.versions), default=0) + 1)
        version = Version(number, hashlib.sha256(data).hexdigest(),
                          now.isoformat(timespec="microseconds"), estimator, source, trained_on,
                          features=features)
        before = history
        history = replace(history, versions=(*history.versions, version))
        history = history.with_role(number, role, by, now)
        if role == "champion":
            write_champion(store, sensor, data,
                           manifest_of(sensor, replace(version, role=role), since=now))
        _write_history(store, history, before)
    return replace(version, role=role)


def _archive(store: Store, sensor: Sensor, data: bytes, number: int) -> int:
    """Write ``data`` as version ``number`` or, where a file of that number exists, the next
    free number: a save interrupted between its version file and its history (a process
    killed, a store error) left that file, which no history names. It is kept as it is."""
    while True:
        try:
            store.put(version_path(sensor, number), data, overwrite=False)
            return number
        except AlreadyExists:
            number += 1


def save_estimator(store: Store, sensor: Sensor, estimator: Any, *, source: str, role: str,
                   by: str, trained_on: tuple[Hour, Hour] | None = None,
                   now: datetime | None = None, under_lock: bool = False,
                   features: tuple[str, ...] = ()) -> Version:
    """A fitted or imported model as the sensor's next version (see ``add_version``);
    ``features``: the derived features it was fitted on, after the value."""
    check_estimator(estimator, str(sensor), features)
    return add_version(store, sensor, dumps_model(estimator), estimator=describe(estimator),
                       source=source, role=role, by=by, now=now, under_lock=under_lock,
                       features=features,
                       trained_on={"from": str(trained_on[0]), "to": str(trained_on[1])}
                       if trained_on else None)


def set_champion(store: Store, sensor: Sensor, number: int, *, by: str,
                 now: datetime | None = None, under_lock: bool = False) -> Version:
    """Version ``number`` becomes the champion (a promote or a rollback): the champion view
    gets its exact bytes, the previous champion retires."""
    now = now or datetime.now(UTC)
    with _locked(store, under_lock):
        history = _archived(store, sensor, now)
        version = history.version(number)
        data = version_bytes(store, sensor, version)
        write_champion(store, sensor, data, manifest_of(sensor, version, since=now))
        _write_history(store, history.with_role(number, "champion", by, now), history)
    return replace(version, role="champion")


def _archived(store: Store, sensor: Sensor, now: datetime) -> History:
    """The sensor's history, its champion view archived as a version first if it has none
    (a store from before versions). Under the sensor's lock."""
    try:
        history = read_history(store, sensor)
    except ModelNotFound:
        return History(sensor.device, sensor.tag)
    if history.archived:
        return history
    data = stored_model_bytes(store, sensor)
    [only] = history.versions
    try:
        store.put(version_path(sensor, only.number), data, overwrite=False)
    except AlreadyExists:
        pass  # a migration that stopped after the file: the bytes are the same version's
    history = replace(history, archived=True)
    _write_history(store, history, None)
    return history


def _write_history(store: Store, history: History, before: History | None) -> None:
    """The history, then its challenger pointer where the challenger changed (``before``:
    the history this one replaces). Both under the models lock; a crash between the two
    leaves a pointer that ``verify`` names and the next role change of the sensor rewrites."""
    store.put(history_path(history.sensor), history.encode())
    challenger = history.challenger
    if before is not None and challenger == before.challenger:
        return
    if challenger is None:
        store.delete(challenger_path(history.sensor))
    else:
        body: dict[str, object] = {"version": challenger.number, "sha256": challenger.sha256}
        if challenger.features:
            body["features"] = list(challenger.features)
        store.put(challenger_path(history.sensor), json.dumps(body).encode())


def manifest_of(sensor: Sensor, version: Version, since: datetime | None = None
                ) -> ModelManifest:
    """The registry's manifest of a version (the champion view's, champion ``since``)."""
    return ModelManifest(device=sensor.device, tag=sensor.tag, version=version.number,
                         sha256=version.sha256, format="skops", estimator=version.estimator,
                         sklearn_version=sklearn_version(), trained_on=version.trained_on,
                         created=version.created, source=version.source,
                         champion_since=since.isoformat(timespec="microseconds") if since else "",
                         features=version.features)


def migrate(store: Store, sensors: Iterator[Sensor] | list[Sensor],
            now: datetime | None = None) -> int:
    """Archive every listed sensor's champion view as its first version (once); how many."""
    now = now or datetime.now(UTC)
    done = 0
    for sensor in sensors:
        if store.exists(history_path(sensor)):
            continue
        with ModelsLock(store):
            _archived(store, sensor, now)
        done += 1
    return done


# --- the models lock -----------------------------------------------------------------------


class ModelsLock:
    """The store's lock on model roles (``versions/lock.json``): created if absent; an
    expired one is taken over only at the version read (a conditional write), so two takers
    never both hold it. ``train`` holds it for its whole run (renewing it group by group, its
    workers writing under it); a promote, a rollback or an import holds it for its changes."""

    def __init__(self, store: Store, *, ttl: timedelta = LOCK_TTL, wait_s: float = 30.0) -> None:
        self.store, self.ttl, self.wait_s = store, ttl, wait_s
        self.token = f"{time.time_ns()}-{id(self)}"
        self._renewed = time.monotonic()

    def _body(self) -> bytes:
        expires = datetime.now(UTC) + self.ttl
        return json.dumps({"token": self.token, "expires": expires.isoformat()}).encode()

    def __enter__(self) -> ModelsLock:
        deadline = time.monotonic() + self.wait_s
        while not _take(self.store, MODELS_LOCK, self._body(), datetime.now(UTC)):
            if time.monotonic() > deadline:
                raise Conflict(f"the store's models are being changed by another command "
                               f"({MODELS_LOCK}); try again when it ends")
            time.sleep(0.05)
        self._renewed = time.monotonic()
        return self

    def renew(self) -> None:
        """Push the expiry on; Conflict when another command took the lock over meanwhile."""
        data, version = self.store.get_versioned(MODELS_LOCK)
        if json.loads(data).get("token") != self.token:
            raise Conflict(f"{MODELS_LOCK} was taken over by another command")
        self.store.put(MODELS_LOCK, self._body(), if_match=version)
        self._renewed = time.monotonic()

    def keep(self) -> None:
        """``renew`` once a quarter of the lock's time has passed since it was taken or last
        renewed: called before each change of a long series (a fleet's promote or rollback,
        sensor by sensor, can outlast one lock period on Blob storage)."""
        if time.monotonic() - self._renewed > self.ttl.total_seconds() / 4:
            self.renew()

    def __exit__(self, *exc: object) -> None:
        try:
            data, version = self.store.get_versioned(MODELS_LOCK)
            if json.loads(data).get("token") == self.token:
                self.store.delete(MODELS_LOCK, if_match=version)
        except (NotFound, Conflict, ValueError):
            pass


@contextmanager
def _locked(store: Store, under_lock: bool) -> Iterator[None]:
    """The models lock, unless the caller already holds it (``under_lock``)."""
    if under_lock:
        yield
        return
    with ModelsLock(store):
        yield


def _take(store: Store, path: str, body: bytes, now: datetime) -> bool:
    try:
        store.put(path, body, overwrite=False)
        return True
    except AlreadyExists:
        pass
    try:
        data, version = store.get_versioned(path)
        expires = datetime.fromisoformat(json.loads(data)["expires"])
    except NotFound:
        return False  # released meanwhile: the next try creates it
    except (ValueError, KeyError):
        expires = now  # a damaged lock is an expired one
    if expires > now:
        return False
    try:
        store.put(path, body, if_match=version)
        return True
    except Conflict:
        return False


def histories(store: Store) -> Iterator[tuple[str, Callable[[], History]]]:
    """(path, reader) of every history file in the store."""
    for path in store.list(VERSIONS):
        if path.endswith(".history.json"):
            yield path, lambda path=path: History.decode(store.get(path), path)


def champion_view_matches(store: Store, sensor: Sensor, history: History) -> bool:
    champion = history.champion
    try:
        return champion is not None and read_manifest(store, sensor).sha256 == champion.sha256
    except ModelError:
        return False


