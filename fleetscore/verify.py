"""``fleetscore verify``: find store files changed or truncated after they were written.

Every file fleetscore writes for later use has its sha256 recorded where it is referenced:
models in their manifests, window parts in their arrival records (hour parts in hour records,
day parts in day records, ``arrivals/YYYY/MM/DD/day/``: both carry ``part`` and ``sha256``),
predictions in the run manifest. Verification reads each file once and compares.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass

from .errors import NotFound
from .models import list_models, model_path, read_manifest
from .runs import list_manifests
from .stores import Store


@dataclass(frozen=True)
class Problem:
    path: str
    reason: str


def _check(store: Store, path: str, expected: str | None, what: str) -> Problem | None:
    if not expected:
        return None
    try:
        data = store.get(path)
    except NotFound:
        return Problem(path, f"{what} is missing")
    digest = hashlib.sha256(data).hexdigest()
    if digest != expected:
        return Problem(path, f"{what} was changed or truncated after it was written "
                             f"(sha256 {digest[:12]}, recorded {expected[:12]}, {len(data)} bytes)")
    return None


def verify(store: Store) -> tuple[int, list[Problem]]:
    checked = 0
    problems: list[Problem | None] = []
    for sensor in sorted(list_models(store)):
        checked += 1
        problems.append(_check(store, model_path(sensor), read_manifest(store, sensor).sha256,
                               f"the model of {sensor}"))
    for path in store.list("arrivals"):
        try:
            record = json.loads(store.get(path))
        except ValueError:
            problems.append(Problem(path, "arrival record is not JSON"))
            continue
        if record.get("part"):
            checked += 1
            problems.append(_check(store, record["part"], record.get("sha256"), "window file"))
    for manifest in list_manifests(store):
        for entry in manifest.get("predictions", []):
            checked += 1
            problems.append(_check(store, entry["path"], entry.get("sha256"),
                                   f"predictions of {manifest['window']} ({entry.get('unit')})"))
    return checked, [p for p in problems if p is not None]
