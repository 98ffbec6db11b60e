"""Typed records that cross a boundary (a store file, an HTTP answer, the CLI's JSON): each has
one encoder (``to_json``) and one decoder (``from_json``), and every reader goes through them.

A run manifest, ``runs/HOUR.json``: what the hour's last run did and which predictions files
are the hour's visible ones. Its JSON layout is the store layout's (docs/architecture.md);
fields added later are optional, so a manifest an earlier version wrote still reads.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from fleetscore.errors import InputError

# A unit's states, wherever it runs (backends, the orchestrator, finalize).
PENDING, RUNNING, SUCCEEDED, PARTIAL, FAILED = "pending", "running", "succeeded", "partial", "failed"
TERMINAL = frozenset({SUCCEEDED, PARTIAL, FAILED})

# A run's status and the CLI's exit code for it (docs/reliability.md).
EXIT_CODES = {"succeeded": 0, "partial": 3, "failed": 3, "no_data": 6}
STATUSES = frozenset(EXIT_CODES)


@dataclass(frozen=True)
class UnitOutcome:
    """A unit's state as the run carries it from submit and poll to finalize: in the CLI's
    loop, and between the orchestrator's activities as JSON (``to_json`` keeps the keys an
    in-flight orchestration's history already holds)."""

    unit: str
    state: str
    result: bool = False  # the unit wrote its result file
    scored: int | None = None
    failed: int | None = None
    anomalies: int | None = None
    error_kind: str | None = None
    error: str | None = None

    @property
    def terminal(self) -> bool:
        return self.state in TERMINAL

    @classmethod
    def pending(cls, unit: str) -> UnitOutcome:
        return cls(unit, PENDING)

    @classmethod
    def failure(cls, unit: str, kind: str, message: str) -> UnitOutcome:
        return cls(unit, FAILED, error_kind=kind, error=message[:1000])

    def to_json(self) -> dict[str, Any]:
        body: dict[str, Any] = {"unit": self.unit, "state": self.state, "result": self.result}
        if self.result:
            body.update(scored=self.scored, failed=self.failed, anomalies=self.anomalies)
        if self.error_kind or self.error:
            body.update(error_kind=self.error_kind, error=self.error)
        return body

    @classmethod
    def from_json(cls, body: Mapping[str, Any]) -> UnitOutcome:
        try:
            return cls(unit=str(body["unit"]), state=str(body["state"]),
                       result=bool(body.get("result", False)), scored=body.get("scored"),
                       failed=body.get("failed"), anomalies=body.get("anomalies"),
                       error_kind=body.get("error_kind"), error=body.get("error"))
        except (KeyError, TypeError) as exc:
            raise InputError(f"a unit's outcome of the wrong shape: {exc}") from exc


@dataclass(frozen=True)
class SensorCounts:
    planned: int = 0
    scored: int = 0
    failed: int = 0
    no_data: int = 0
    no_model: int = 0

    def to_json(self) -> dict[str, int]:
        return {"planned": self.planned, "scored": self.scored, "failed": self.failed,
                "no_data": self.no_data, "no_model": self.no_model}

    @classmethod
    def from_json(cls, body: Mapping[str, Any]) -> SensorCounts:
        return cls(**{k: int(body.get(k, 0)) for k in
                      ("planned", "scored", "failed", "no_data", "no_model")})


@dataclass(frozen=True)
class Failure:
    sensor: str
    kind: str
    message: str
    unit: str = ""

    def to_json(self) -> dict[str, str]:
        return {"sensor": self.sensor, "kind": self.kind, "message": self.message,
                "unit": self.unit}

    @classmethod
    def from_json(cls, body: Mapping[str, Any]) -> Failure:
        return cls(sensor=str(body["sensor"]), kind=str(body["kind"]),
                   message=str(body.get("message", "")), unit=str(body.get("unit", "")))


@dataclass(frozen=True)
class PredictionsFile:
    """One of the hour's visible predictions files, with the hash it was written with."""

    path: str
    sha256: str | None = None
    run_id: str | None = None
    unit: str | None = None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"path": self.path, "sha256": self.sha256, "run_id": self.run_id}
        if self.unit is not None:
            out["unit"] = self.unit
        return out

    @classmethod
    def from_json(cls, body: Mapping[str, Any]) -> PredictionsFile:
        return cls(path=str(body["path"]), sha256=body.get("sha256"),
                   run_id=body.get("run_id"), unit=body.get("unit"))


@dataclass(frozen=True)
class ShadowResult:
    """A unit's challengers scored beside its champions: the shadow file (``shadow/``, never a
    visible predictions file), its counts, the challengers that failed (each alone), or why
    the shadow pass as a whole failed (the unit did not)."""

    unit: str
    path: str | None
    sha256: str | None
    challengers: int
    scored: int
    anomalies: int
    failed: tuple[Failure, ...] = ()
    error: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {"unit": self.unit, "path": self.path, "sha256": self.sha256,
                "challengers": self.challengers, "scored": self.scored,
                "anomalies": self.anomalies, "failed": [f.to_json() for f in self.failed],
                "error": self.error}

    @classmethod
    def from_json(cls, body: Mapping[str, Any]) -> ShadowResult:
        return cls(unit=str(body["unit"]), path=body.get("path"), sha256=body.get("sha256"),
                   challengers=int(body.get("challengers", 0)), scored=int(body.get("scored", 0)),
                   anomalies=int(body.get("anomalies", 0)),
                   failed=tuple(Failure.from_json(f) for f in body.get("failed", ())),
                   error=body.get("error"))


@dataclass(frozen=True)
class UnitSummary:
    id: str
    status: str
    sensors: int
    scored: int
    anomalies: int
    duration_s: float
    # When the unit read its models: its rows were made by the champions current then.
    models_at: str = ""

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "status": self.status, "sensors": self.sensors,
                "scored": self.scored, "anomalies": self.anomalies,
                "duration_s": self.duration_s, "models_at": self.models_at}

    @classmethod
    def from_json(cls, body: Mapping[str, Any]) -> UnitSummary:
        return cls(id=str(body["id"]), status=str(body["status"]),
                   sensors=int(body.get("sensors", 0)), scored=int(body.get("scored", 0)),
                   anomalies=int(body.get("anomalies", 0)),
                   duration_s=float(body.get("duration_s", 0.0)),
                   models_at=str(body.get("models_at", "")))


@dataclass(frozen=True)
class SensorFlags:
    """A sensor's flagged points and points in one hour: a manifest lists the sensors whose
    share reached the noisy guard's day threshold (the cheap, exact input of the next hours'
    rolling day; fleetscore/alerts/noisy.py)."""

    sensor: str
    flagged: int
    points: int

    def to_json(self) -> list[Any]:
        return [self.sensor, self.flagged, self.points]

    @classmethod
    def from_json(cls, body: Any) -> SensorFlags:
        sensor, flagged, points = body
        return cls(str(sensor), int(flagged), int(points))


@dataclass(frozen=True)
class NoisySensor:
    """A sensor the runaway guard marked noisy this hour: its shares, and the hour its
    streak of noisy hours began (what names its one ``noisy_sensor`` alert)."""

    sensor: str
    hour_share: float
    day_share: float
    flagged: int
    points: int
    since: str

    def to_json(self) -> dict[str, Any]:
        return {"sensor": self.sensor, "hour_share": self.hour_share,
                "day_share": self.day_share, "flagged": self.flagged, "points": self.points,
                "since": self.since}

    @classmethod
    def from_json(cls, body: Mapping[str, Any]) -> NoisySensor:
        return cls(sensor=str(body["sensor"]), hour_share=float(body["hour_share"]),
                   day_share=float(body["day_share"]), flagged=int(body.get("flagged", 0)),
                   points=int(body.get("points", 0)), since=str(body["since"]))


@dataclass(frozen=True)
class RunManifest:
    window: str
    status: str
    run_id: str = ""
    restricted: bool = False
    started: str = ""
    finished: str = ""
    started_at: str = ""  # microseconds: compared with the models' times
    duration_s: float = 0.0
    backend: str = ""
    version: str = ""
    unit_size: int = 0
    units: int = 0
    sensors: SensorCounts = field(default_factory=SensorCounts)
    points: int = 0
    anomalies: int = 0
    failures: tuple[Failure, ...] = ()
    kept_from_earlier_run: tuple[str, ...] = ()
    no_data: tuple[str, ...] = ()
    no_model: tuple[str, ...] = ()
    top_anomalous: tuple[tuple[str, int], ...] = ()
    # None: a manifest that lists no files (an earlier version's): the hour's folder is read.
    predictions: tuple[PredictionsFile, ...] | None = None
    unit_results: tuple[UnitSummary, ...] = ()
    reason: str = ""  # why the status, where the counts alone do not say (an error threshold)
    alerts: tuple[str, ...] = ()  # keys of the alerts this run raised (alerts/records/)
    shadow: tuple[ShadowResult, ...] = ()  # units that scored challengers
    noisy: tuple[NoisySensor, ...] = ()  # sensors the runaway guard marked
    # None: a manifest of an earlier version (its hour is read from its predictions).
    flag_counts: tuple[SensorFlags, ...] | None = None

    @property
    def models_at(self) -> str:
        """When the earliest unit read its models (else when the run began): an hour whose
        sensor got a new champion after this was scored (in part) by one no longer current."""
        return min((u.models_at for u in self.unit_results if u.models_at),
                   default=self.started_at)

    @property
    def exit_code(self) -> int:
        return EXIT_CODES[self.status]

    def to_json(self) -> dict[str, Any]:
        return {
            "window": self.window, "run_id": self.run_id, "status": self.status,
            "restricted": self.restricted, "started": self.started, "finished": self.finished,
            "started_at": self.started_at, "duration_s": self.duration_s,
            "backend": self.backend, "version": self.version, "unit_size": self.unit_size,
            "units": self.units, "sensors": self.sensors.to_json(), "points": self.points,
            "anomalies": self.anomalies, "failures": [f.to_json() for f in self.failures],
            "kept_from_earlier_run": list(self.kept_from_earlier_run),
            "no_data": list(self.no_data), "no_model": list(self.no_model),
            "top_anomalous": [list(t) for t in self.top_anomalous],
            "predictions": [p.to_json() for p in self.predictions or ()],
            "unit_results": [u.to_json() for u in self.unit_results],
            "reason": self.reason, "alerts": list(self.alerts),
            "shadow": [u.to_json() for u in self.shadow],
            "noisy": [n.to_json() for n in self.noisy],
            "flag_counts": None if self.flag_counts is None else [
                f.to_json() for f in self.flag_counts],
        }

    def encode(self) -> bytes:
        return json.dumps(self.to_json(), separators=(",", ":")).encode()

    @classmethod
    def from_json(cls, body: Any, path: str) -> RunManifest:
        """The manifest in ``body`` (parsed JSON); InputError names ``path`` when it is not
        one of this version (the wrong shape, a field of the wrong type)."""
        if not (isinstance(body, dict) and isinstance(body.get("window"), str)
                and body.get("status") in STATUSES):
            raise InputError(f"run manifest {path} is damaged: not a run manifest of this version")
        try:
            predictions = body.get("predictions")
            flag_counts = body.get("flag_counts")
            return cls(
                window=body["window"], status=body["status"], run_id=str(body.get("run_id", "")),
                restricted=bool(body.get("restricted", False)),
                started=str(body.get("started", "")), finished=str(body.get("finished", "")),
                started_at=str(body.get("started_at", "")),
                duration_s=float(body.get("duration_s", 0.0)),
                backend=str(body.get("backend", "")), version=str(body.get("version", "")),
                unit_size=int(body.get("unit_size", 0)), units=int(body.get("units", 0)),
                sensors=SensorCounts.from_json(body.get("sensors", {})),
                points=int(body.get("points", 0)), anomalies=int(body.get("anomalies", 0)),
                failures=tuple(Failure.from_json(f) for f in body.get("failures", ())),
                kept_from_earlier_run=tuple(body.get("kept_from_earlier_run", ())),
                no_data=tuple(body.get("no_data", ())),
                no_model=tuple(body.get("no_model", ())),
                top_anomalous=tuple((str(s), int(n)) for s, n in body.get("top_anomalous", ())),
                predictions=None if predictions is None else tuple(
                    PredictionsFile.from_json(p) for p in predictions),
                unit_results=tuple(UnitSummary.from_json(u)
                                   for u in body.get("unit_results", ())),
                reason=str(body.get("reason", "")),
                alerts=tuple(str(k) for k in body.get("alerts", ())),
                shadow=tuple(ShadowResult.from_json(u) for u in body.get("shadow", ())),
                noisy=tuple(NoisySensor.from_json(n) for n in body.get("noisy", ())),
                flag_counts=None if flag_counts is None else tuple(
                    SensorFlags.from_json(f) for f in flag_counts),
            )
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise InputError(f"run manifest {path} is damaged: {type(exc).__name__} "
                             f"in a field") from exc

    @classmethod
    def decode(cls, data: bytes, path: str) -> RunManifest:
        try:
            body = json.loads(data)
        except (ValueError, RecursionError) as exc:
            raise InputError(f"run manifest {path} is damaged: not JSON "
                             f"({type(exc).__name__})") from exc
        return cls.from_json(body, path)
