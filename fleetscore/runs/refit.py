"""The refit job: challengers trained on the days before the last hours with data, compared
with the champions on those hours, promoted where the gates pass (or left for review).

One policy, two drivers. ``fleetscore refit`` runs it in one process; the Functions app's
``refit_models`` orchestration runs the same steps as activities, with each group of
sensors trained by a Batch task of the scoring image (``python -m scoring_container train``):

```
take     the models lock for refit R (versions/lock.json, its token is R)   held by another:
         status "locked", nothing trained
plan     hours with data; train range, compared range; sensors with points in the train range
         split into groups    ─> refit/R/plan.json, refit/R/groups/<group>.json
train    each group: challengers of its sensors, only while the lock still names R
         ─> versions/..., refit/R/results/<group>.json
finish   compare this refit's challengers with the champions on the compared hours; promote
         those that pass (under the lock), rebuild the bank; write the manifest
         ─> refit/R.json; release the lock
```

The lock's token is the refit id, so whichever process holds a step (an activity, a Batch
task, the CLI) proves it acts for R by renewing the lock: a task that finds the lock gone or
taken over (the refit ended, or its lock lapsed and another command took it) refuses to write.
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta
from typing import Any

from fleetscore.core.hours import Hour, hour_range
from fleetscore.core.sensors import Sensor
from fleetscore.errors import Conflict, InputError, NotFound, UsageError
from fleetscore.model import estimators
from fleetscore.model.compare import Comparison, Gates, compare, with_challengers
from fleetscore.model.features import parse as parse_features
from fleetscore.model.training import training_hours
from fleetscore.model.versions import MODELS_LOCK, ModelsLock, read_history, set_champion
from fleetscore.storage import Store

REFIT = "refit"
EVENT_NAME = "FleetscoreRefit"  # the Application Insights custom event of a finished refit
log = logging.getLogger("fleetscore.refit")

# Statuses, said plainly: none of them is "succeeded" for work that did not happen.
SUCCEEDED, PARTIAL, FAILED = "succeeded", "partial", "failed"
LOCKED, NO_DATA, NOTHING_TRAINED = "locked", "no_data", "nothing_trained"
# What became of each sensor of the plan.
PROMOTED, LEFT, SKIPPED, GROUP_FAILED = "promoted", "left", "skipped", "failed"
REVIEW = "passes the gates; left for review"


def manifest_path(refit_id: str) -> str:
    return f"{REFIT}/{refit_id}.json"


def plan_path(refit_id: str) -> str:
    return f"{REFIT}/{refit_id}/plan.json"


def group_path(refit_id: str, group: str) -> str:
    return f"{REFIT}/{refit_id}/groups/{group}.json"


def result_path(refit_id: str, group: str) -> str:
    return f"{REFIT}/{refit_id}/results/{group}.json"


def group_id(index: int) -> str:
    return f"g{index:06d}"


def new_refit_id(now: datetime, nonce: str) -> str:
    """``refit-YYYYMMDDTHHMMSS-<nonce>``: sortable, and recognisable in the lock file."""
    return f"refit-{now:%Y%m%dT%H%M%S}-{nonce[:6]}"


# --- the lock ---------------------------------------------------------------------------------


class RefitLock(ModelsLock):
    """The store's models lock held for refit ``refit_id``: its token is the refit id, so an
    activity, a Batch task and the CLI all act as the same holder. Taken once (``take``) or
    waited for (``with``); ``renew`` raises Conflict once the lock no longer names the refit."""

    def __init__(self, store: Store, refit_id: str, *, ttl: timedelta,
                 wait_s: float = 0.0) -> None:
        super().__init__(store, ttl=ttl, wait_s=wait_s)
        self.token = refit_id

    def take(self) -> bool:
        """Take the lock (waiting up to ``wait_s``); False when another refit or command
        holds it. A lock that already names this refit (a retried step) is kept and renewed."""
        try:
            self.renew()
            return True
        except Conflict:
            pass
        try:
            self.__enter__()
        except Conflict:
            return False
        return True

    def renew(self) -> None:
        try:
            super().renew()
        except NotFound as exc:
            raise Conflict(f"{MODELS_LOCK} is no longer held by refit {self.token}") from exc
        except Conflict:
            # Several steps of one refit renew at once (its tasks, its status polls): a renewal
            # that lost the conditional write to one of them finds the lock fresh and its own.
            if not self.names_this_refit():
                raise

    def names_this_refit(self) -> bool:
        try:
            return bool(json.loads(self.store.get(MODELS_LOCK)).get("token") == self.token)
        except (NotFound, ValueError, AttributeError):
            return False

    def release(self) -> None:
        self.__exit__(None, None, None)


def holder(store: Store) -> str:
    """Who holds the models lock, in words (for a refit that could not take it)."""
    try:
        body = json.loads(store.get(MODELS_LOCK))
        token, expires = str(body.get("token", "")), str(body.get("expires", ""))
    except NotFound:
        return "nobody any more"
    except (ValueError, AttributeError):
        return "a damaged lock file"
    who = f"refit {token}" if token.startswith("refit-") else "another command"
    return f"{who} (until {expires[:19]})"


# --- the records ------------------------------------------------------------------------------


@dataclass(frozen=True)
class RefitOptions:
    days: int = 7
    compare_hours: int = 24
    max_anomaly_rate: float | None = None
    min_agreement: float | None = None
    review: bool = False  # train and compare, promote nothing
    estimator: str = estimators.DEFAULT  # what the challengers are (train --estimator)
    features: tuple[str, ...] = ()  # and the derived features they see (train --features)

    def __post_init__(self) -> None:
        if self.days < 1 or self.compare_hours < 1:
            raise UsageError("--days and --compare-hours must be 1 or more")
        if self.estimator not in estimators.NAMES:
            raise UsageError(f"refit estimator {self.estimator!r}: expected one of "
                             f"{', '.join(estimators.NAMES)}")
        # JSON gives a list (or the settings a text): one tuple, every name checked.
        named = self.features if isinstance(self.features, str) else ",".join(self.features)
        object.__setattr__(self, "features", parse_features(named))

    @property
    def gates(self) -> Gates:
        return Gates(self.max_anomaly_rate, self.min_agreement)


@dataclass(frozen=True)
class RefitPlan:
    refit_id: str
    started: str
    options: RefitOptions
    since: str  # the train range, hours inclusive
    until: str
    compared: tuple[str, str]  # the compared hours, inclusive
    groups: tuple[str, ...]  # group ids; each group's sensors are in refit/R/groups/<id>.json
    sensors: int
    lock_ttl_s: int  # how long the lock lives past each renewal, by whoever renews it

    @property
    def train_range(self) -> tuple[Hour, Hour]:
        return Hour.parse(self.since), Hour.parse(self.until)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, body: Mapping[str, Any]) -> RefitPlan:
        return cls(**{**body, "options": RefitOptions(**body["options"]),
                      "compared": tuple(body["compared"]), "groups": tuple(body["groups"])})


@dataclass(frozen=True)
class GroupResult:
    """One group's training: ``trained`` (sensor, version), ``skipped`` (sensor, reason), or
    ``refused`` (the lock no longer named the refit) / ``unusable`` with ``error``."""

    group: str
    status: str  # trained, refused, unusable
    trained: tuple[tuple[str, int], ...] = ()
    skipped: tuple[tuple[str, str], ...] = ()
    error: str = ""

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, body: Mapping[str, Any]) -> GroupResult:
        return cls(group=body["group"], status=body["status"],
                   trained=tuple((s, int(v)) for s, v in body.get("trained", ())),
                   skipped=tuple((s, str(r)) for s, r in body.get("skipped", ())),
                   error=str(body.get("error", "")))


@dataclass(frozen=True)
class SensorOutcome:
    outcome: str  # promoted, left, skipped, failed
    version: int | None = None  # the challenger this refit trained
    reason: str = ""


@dataclass(frozen=True)
class RefitManifest:
    """``refit/<refit_id>.json``: what a refit did, whoever drove it."""

    refit_id: str
    status: str
    started: str
    finished: str
    reason: str = ""  # why, when the status is not succeeded
    by: str = ""  # cli, functions
    options: RefitOptions = field(default_factory=RefitOptions)
    train_range: tuple[str, str] | None = None
    compared: tuple[str, str] | None = None
    groups: int = 0
    trained: int = 0
    promoted: int = 0
    left: int = 0
    skipped: int = 0
    failed: int = 0
    bank: str = ""  # what the rebuilt bank holds
    sensors: dict[str, SensorOutcome] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, body: Mapping[str, Any]) -> RefitManifest:
        def pair(value: Any) -> tuple[str, str] | None:
            return None if value is None else (str(value[0]), str(value[1]))

        return cls(**{**body, "options": RefitOptions(**body["options"]),
                      "train_range": pair(body.get("train_range")),
                      "compared": pair(body.get("compared")),
                      "sensors": {s: SensorOutcome(**o) for s, o in body["sensors"].items()}})

    def event(self) -> dict[str, str | int]:
        """The Application Insights custom event's dimensions (flat, no per-sensor detail)."""
        return {"microsoft.custom_event.name": EVENT_NAME, "refit_id": self.refit_id,
                "refit_status": self.status, "refit_reason": self.reason, "refit_by": self.by,
                "refit_trained": self.trained, "refit_promoted": self.promoted,
                "refit_left": self.left, "refit_skipped": self.skipped,
                "refit_failed": self.failed, "refit_groups": self.groups,
                "refit_train_range": " .. ".join(self.train_range or ()),
                "refit_compared": " .. ".join(self.compared or ()),
                "refit_manifest": manifest_path(self.refit_id)}


def _put_json(store: Store, path: str, body: Any) -> None:
    store.put(path, json.dumps(body, indent=1).encode())


def write_manifest(store: Store, manifest: RefitManifest) -> None:
    _put_json(store, manifest_path(manifest.refit_id), manifest.to_json())


def read_manifest(store: Store, refit_id: str) -> RefitManifest | None:
    try:
        return RefitManifest.from_json(json.loads(store.get(manifest_path(refit_id))))
    except NotFound:
        return None


def read_plan(store: Store, refit_id: str) -> RefitPlan:
    try:
        return RefitPlan.from_json(json.loads(store.get(plan_path(refit_id))))
    except NotFound as exc:
        raise InputError(f"refit {refit_id} has no plan ({plan_path(refit_id)})") from exc


def read_result(store: Store, refit_id: str, group: str) -> GroupResult | None:
    try:
        return GroupResult.from_json(json.loads(store.get(result_path(refit_id, group))))
    except NotFound:
        return None


def early(refit_id: str, status: str, reason: str, *, started: str, finished: str, by: str,
          options: RefitOptions) -> RefitManifest:
    """The manifest of a refit that stopped before training (locked, no data)."""
    return RefitManifest(refit_id, status, started, finished, reason, by, options)


# --- plan -------------------------------------------------------------------------------------


def plan(store: Store, refit_id: str, options: RefitOptions, *, started: datetime,
         ttl: timedelta, max_groups: int = 1) -> RefitPlan:
    """The hours, the ranges and the sensors in at most ``max_groups`` groups of about equal
    points, stored under the refit (UsageError: too few hours with data to train and compare)."""
    from fleetscore.data.arrivals import hours_with_arrivals, read_arrivals_many

    hours = hours_with_arrivals(store)
    if len(hours) <= options.compare_hours:
        raise UsageError(f"{len(hours)} hours with data: not enough to train on some and "
                         f"compare on the last {options.compare_hours}")
    compared = hours[-options.compare_hours:]
    until = hours[-options.compare_hours - 1]
    since = until - (options.days * 24 - 1)
    points: Counter[Sensor] = Counter()
    for counts in read_arrivals_many(store, training_hours(store, since=since,
                                                           until=until)).values():
        points.update(counts)
    groups = split(points, max_groups)
    ids = tuple(group_id(i) for i in range(len(groups)))
    for gid, sensors in zip(ids, groups, strict=True):
        _put_json(store, group_path(refit_id, gid), [str(s) for s in sensors])
    found = RefitPlan(refit_id, started.isoformat(), options, str(since), str(until),
                      (str(compared[0]), str(compared[-1])), ids, len(points),
                      int(ttl.total_seconds()))
    _put_json(store, plan_path(refit_id), found.to_json())
    return found


def split(points: Counter[Sensor], max_groups: int) -> list[list[Sensor]]:
    """Consecutive sensors (Device order, so a group reads few row groups) in at most
    ``max_groups`` groups of about equal points: each sensor goes to the group its points
    so far fall in. Training splits a group further by its memory budget."""
    ordered = sorted(points, key=lambda s: (s.device, s.tag))
    total = sum(points.values()) or 1
    k = max(1, min(max_groups, len(ordered)))
    out: list[list[Sensor]] = [[] for _ in range(k)]
    held = 0
    for sensor in ordered:
        out[min(k - 1, held * k // total)].append(sensor)
        held += points[sensor]
    return [g for g in out if g]


# --- train one group --------------------------------------------------------------------------


def train_group(store: Store, refit_id: str, group: str, *,
                workers: int | None = 1) -> GroupResult:
    """Train one group's sensors as challengers, as refit ``refit_id``: only while the models
    lock names the refit (checked, and renewed, before anything is written and before each
    group of fits). A group whose result is recorded is not trained again (a retried task).
    The result is recorded in the store and returned."""
    from fleetscore.model.training import train

    done = read_result(store, refit_id, group)
    if done is not None:
        return done
    found = read_plan(store, refit_id)
    if group not in found.groups:
        return record(store, refit_id, GroupResult(group, "unusable", error=(
            f"refit {refit_id} has no group {group} (groups: {len(found.groups)})")))
    sensors = {Sensor.parse(s) for s in json.loads(store.get(group_path(refit_id, group)))}
    lock = RefitLock(store, refit_id, ttl=timedelta(seconds=found.lock_ttl_s))
    try:
        lock.renew()
        since, until = found.train_range
        result = train(store, since=since, until=until, sensors=sensors, role="challenger",
                       workers=workers, lock=lock, estimator=found.options.estimator,
                       features=found.options.features)
    except Conflict as exc:
        # Nothing more is written for this refit: the lock is gone or another holds it.
        return record(store, refit_id, GroupResult(group, "refused", error=(
            f"the models lock no longer names refit {refit_id}: {exc}")))
    trained = tuple(sorted((str(m.sensor), m.version) for m in result.trained))
    return record(store, refit_id, GroupResult(group, "trained", trained, result.skipped))


def record(store: Store, refit_id: str, result: GroupResult) -> GroupResult:
    """A group's result, where ``finish`` reads it (also a task's record of a group it
    could not train at all)."""
    _put_json(store, result_path(refit_id, result.group), result.to_json())
    return result


# --- finish -----------------------------------------------------------------------------------


def finish(store: Store, found: RefitPlan, results: Mapping[str, GroupResult | str], *,
           lock: RefitLock, now: datetime, by: str,
           rebuild: Callable[[Store, bool], str] | None = None) -> RefitManifest:
    """Compare this refit's challengers with their champions on the compared hours, promote
    those that pass the gates (unless for review) while the lock still names the refit,
    rebuild the bank, and write the manifest. ``results``: each group's result, or why its
    task failed. ``rebuild`` rebuilds the bank and says what it holds. The caller releases the
    lock."""
    trained = {s: v for r in results.values() if isinstance(r, GroupResult)
               for s, v in r.trained}
    outcomes = _untrained(store, found, results)
    first, last = (Hour.parse(h) for h in found.compared)
    histories = with_challengers(store, [Sensor.parse(s) for s in trained])
    verdicts = [(c, _why_not(found.options.gates, c, trained[c.sensor]))
                for c in compare(store, histories, hour_range(first, last))]
    missing = set(trained) - {c.sensor for c, _ in verdicts}
    # A retried finish: what an earlier attempt promoted is no challenger any more.
    already = _champions_now(store, missing, trained)
    outcomes.update({s: SensorOutcome(PROMOTED, trained[s]) if s in already else
                     SensorOutcome(LEFT, trained[s], "its challenger is no longer there")
                     for s in missing})
    reason, bank = "", ""
    passed = [c for c, why in verdicts if why is None]
    if found.options.review:
        outcomes.update({c.sensor: SensorOutcome(LEFT, c.challenger, why or REVIEW)
                         for c, why in verdicts})
    else:
        try:
            lock.renew()
            _promote(store, passed, now, lock)
        except Conflict as exc:
            reason = f"nothing promoted: {exc}"
            passed = []
        outcomes.update({c.sensor: SensorOutcome(PROMOTED, c.challenger) if c in passed else
                         SensorOutcome(LEFT, c.challenger, why or reason)
                         for c, why in verdicts})
    # Always: the challengers this refit trained (and any it promoted) change the challenger
    # bank that runs shadow-score, even when nothing is promoted.
    bank = (rebuild or _rebuild)(store, bool(passed) or bool(already))
    manifest = _manifest(found, results, outcomes, reason, bank, now, by)
    write_manifest(store, manifest)
    return manifest


def _champions_now(store: Store, sensors: Iterable[str], trained: Mapping[str, int]
                   ) -> set[str]:
    """The sensors whose champion is the version this refit trained."""
    out = set()
    for key in sensors:
        champion = read_history(store, Sensor.parse(key)).champion
        if champion is not None and champion.number == trained[key]:
            out.add(key)
    return out


def _why_not(gates: Gates, c: Comparison, version: int) -> str | None:
    if c.challenger != version:
        return f"its challenger is v{c.challenger}, not v{version} that this refit trained"
    return gates.why_not(c)


def _promote(store: Store, passed: Sequence[Comparison], now: datetime, lock: ModelsLock
             ) -> None:
    for c in passed:
        lock.keep()
        set_champion(store, Sensor.parse(c.sensor), c.challenger, by="refit", now=now,
                     under_lock=True)


def _rebuild(store: Store, champions: bool) -> str:
    """Rebuild the challenger bank, and the champions' bank when ``champions`` changed."""
    from fleetscore.model.bank import rebuild_bank
    from fleetscore.model.challengers import rebuild_challengers

    line = ""
    if champions:
        stats = rebuild_bank(store)
        line = f"model bank: {stats.compiled} of {stats.sensors} models compiled"
    shadow = rebuild_challengers(store)
    if shadow.challengers:
        line += ("; " if line else "") + (f"challenger bank: {shadow.compiled} of "
                                          f"{shadow.challengers} challengers compiled")
    return line


def _untrained(store: Store, found: RefitPlan, results: Mapping[str, GroupResult | str]
               ) -> dict[str, SensorOutcome]:
    """The sensors this refit did not train, and why: too few points, or their group failed
    (its task, the lock) and then every sensor of the group is named with the reason."""
    out: dict[str, SensorOutcome] = {}
    for group in found.groups:
        result = results.get(group, "its training task never reported")
        if isinstance(result, GroupResult) and result.status == "trained":
            out.update({s: SensorOutcome(SKIPPED, None, why) for s, why in result.skipped})
            continue
        why = result if isinstance(result, str) else f"{result.status}: {result.error}"
        for sensor in json.loads(store.get(group_path(found.refit_id, group))):
            out[sensor] = SensorOutcome(GROUP_FAILED, None, f"group {group}: {why}")
    return out


def _manifest(found: RefitPlan, results: Mapping[str, GroupResult | str],
              outcomes: dict[str, SensorOutcome], reason: str, bank: str, now: datetime,
              by: str) -> RefitManifest:
    count = Counter(o.outcome for o in outcomes.values())
    trained = count[PROMOTED] + count[LEFT]
    ok = {g for g, r in results.items() if isinstance(r, GroupResult) and r.status == "trained"}
    bad = [g for g in found.groups if g not in ok]
    if bad and len(bad) == len(found.groups):
        status, reason = FAILED, reason or f"every training task failed ({len(bad)} groups)"
    elif reason:
        status = FAILED
    elif bad:
        status, reason = PARTIAL, f"{len(bad)} of {len(found.groups)} training groups failed"
    elif not trained:
        status = NOTHING_TRAINED
        reason = (f"trained no challenger on {found.since} .. {found.until}: no sensor has "
                  "enough points there")
    else:
        status = SUCCEEDED
    return RefitManifest(
        found.refit_id, status, found.started, now.isoformat(), reason, by, found.options,
        (found.since, found.until), found.compared, len(found.groups), trained,
        count[PROMOTED], count[LEFT], count[SKIPPED], count[GROUP_FAILED], bank,
        dict(sorted(outcomes.items())))


def emit(manifest: RefitManifest) -> None:
    """The refit's Application Insights custom event (``FleetscoreRefit``): a log record with
    ``microsoft.custom_event.name``, which the exporter sends as a customEvents item (as
    alerts send ``FleetscoreAlert``); without telemetry it is an ordinary log line."""
    level = logging.INFO if manifest.status == SUCCEEDED else logging.WARNING
    log.log(level, "refit %s: %s, %d trained, %d promoted, %d left%s", manifest.refit_id,
            manifest.status, manifest.trained, manifest.promoted, manifest.left,
            f" ({manifest.reason})" if manifest.reason else "", extra=manifest.event())


def cleanup(store: Store, refit_id: str) -> None:
    """Drop the refit's working files (its plan, groups and results); the manifest stays."""
    for path in list(store.list(f"{REFIT}/{refit_id}/")):
        store.delete(path)  # a missing file is not an error
