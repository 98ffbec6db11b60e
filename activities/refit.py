"""The refit's activities: parse the input, call fleetscore.runs.refit, return a JSON-safe
dict. The models lock is the refit's (its token is the refit id): begin takes it, status
renews it, finish releases it; the Batch tasks check it before they write."""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime

import azure.durable_functions as df

from fleetscore import runtime
from fleetscore.errors import Conflict, FleetscoreError, UsageError
from fleetscore.runs import refit as policy
from orchestrators.names import REFIT_BEGIN, REFIT_FINISH, REFIT_STATUS, REFIT_SUBMIT

bp = df.Blueprint()
log = logging.getLogger("fleetscore.activities")


def _load(payload) -> dict:
    return json.loads(payload) if isinstance(payload, str | bytes) else payload


def _now() -> datetime:
    return datetime.now(UTC)


def _lock(refit_id: str) -> policy.RefitLock:
    return policy.RefitLock(runtime.store(), refit_id, ttl=runtime.settings().lock_ttl)


def _summary(manifest: policy.RefitManifest) -> dict:
    """The orchestration's output: the manifest without its per-sensor detail (in the store)."""
    body = manifest.to_json()
    body.pop("sensors")
    return {**body, "manifest": policy.manifest_path(manifest.refit_id)}


def _stopped(refit_id: str, started: str, options: policy.RefitOptions, status: str,
             reason: str) -> dict:
    manifest = policy.early(refit_id, status, reason, started=started,
                            finished=_now().isoformat(), by="functions", options=options)
    policy.write_manifest(runtime.store(), manifest)
    policy.emit(manifest)
    return _summary(manifest)


@bp.activity_trigger(input_name="payload", activity=REFIT_BEGIN)
def refit_begin(payload) -> dict:
    """Take the models lock for the refit and plan it; a refit that cannot start records why."""
    body = _load(payload)
    refit_id, started = body["refit_id"], body["started"]
    options = policy.RefitOptions(**(body.get("options") or {}))
    lock = _lock(refit_id)
    if not lock.take():
        return _stopped(refit_id, started, options, policy.LOCKED,
                        f"the models lock is held by {policy.holder(runtime.store())}: "
                        "nothing trained")
    try:
        found = policy.plan(runtime.store(), refit_id, options,
                            started=datetime.fromisoformat(started),
                            ttl=runtime.settings().lock_ttl, max_groups=body["max_groups"])
    except UsageError as exc:  # too few hours with data
        lock.release()
        return _stopped(refit_id, started, options, policy.NO_DATA, str(exc))
    return {"status": "planned", "refit_id": refit_id, "groups": list(found.groups),
            "sensors": found.sensors}


@bp.activity_trigger(input_name="payload", activity=REFIT_SUBMIT)
def refit_submit(payload) -> dict:
    """Batch: one task a group (idempotent). Otherwise the groups are trained here, one after
    another: a small fleet's refit, bounded by the activity's timeout."""
    body = _load(payload)
    refit_id, groups = body["refit_id"], list(body["groups"])
    backend = runtime.backend()
    if backend.trains:
        backend.submit_training(refit_id, groups)
        return {g: {"state": "pending"} for g in groups}
    out = {}
    for group in groups:
        try:
            policy.train_group(runtime.store(), refit_id, group, workers=1)
            out[group] = {"state": "succeeded"}
        except FleetscoreError as exc:
            out[group] = {"state": "failed", "error": f"{exc.kind}: {exc}"}
    return out


@bp.activity_trigger(input_name="payload", activity=REFIT_STATUS)
def refit_status(payload) -> dict:
    """Renew the refit's lock, read the groups' task states; groups still running at the
    deadline, or once the lock is lost, are failed (their tasks refuse to write from then)."""
    body = _load(payload)
    refit_id, groups = body["refit_id"], list(body["groups"])
    try:
        _lock(refit_id).renew()
    except Conflict as exc:
        return {g: {"state": "failed", "error": f"LockLost: {exc}"} for g in groups}
    backend = runtime.backend()
    if backend.trains:
        states = {g: {"state": s.state, "error": f"{s.error_kind}: {s.error}" if s.error else ""}
                  for g, s in backend.poll_training(refit_id, groups).items()}
    else:  # trained inside the submit activity: done when its result is recorded
        states = {g: {"state": "succeeded" if policy.read_result(runtime.store(), refit_id, g)
                      else "failed", "error": ""} for g in groups}
    if _now() >= datetime.fromisoformat(body["deadline"]):
        for g, state in states.items():
            if state["state"] not in ("succeeded", "failed"):
                states[g] = {"state": "failed", "error": (
                    f"DeadlineExceeded: group {g} did not finish before {body['deadline']}")}
    return states


@bp.activity_trigger(input_name="payload", activity=REFIT_FINISH)
def refit_finish(payload) -> dict:
    """Compare, promote, rebuild the bank, write the manifest, release the lock, emit the
    event. Retried after a crash, it finds the lock still its own (released only on success)
    or the manifest already written."""
    body = _load(payload)
    refit_id, store = body["refit_id"], runtime.store()
    done = policy.read_manifest(store, refit_id)
    if done is not None:
        return _summary(done)
    found = policy.read_plan(store, refit_id)
    results: dict[str, policy.GroupResult | str] = {}
    for group, outcome in body["outcomes"].items():
        result = policy.read_result(store, refit_id, group)
        if outcome["state"] == "succeeded" and result is not None:
            results[group] = result
        else:
            results[group] = outcome.get("error") or "its task ended without recording a result"
    lock = _lock(refit_id)
    manifest = policy.finish(store, found, results, lock=lock, now=_now(), by="functions")
    lock.release()
    backend = runtime.backend()
    if backend.trains:
        backend.finish_training(refit_id)
    policy.cleanup(store, refit_id)
    policy.emit(manifest)
    return _summary(manifest)
