"""A compacted hour as readers see it: where it lives, its manifest, and which of its files
hold a unit's sensors. ``fleetscore/data/compaction.py`` writes compacted hours (its docstring has
the format); ``windows`` reads through this module, below both of them.
"""

from __future__ import annotations

import bisect
import json
import logging
from collections.abc import Sequence

from fleetscore.core.hours import Hour
from fleetscore.core.sensors import Sensor
from fleetscore.errors import NotFound
from fleetscore.storage import Store

log = logging.getLogger("fleetscore.data.compaction")

MIN_FILES = 2
FORMAT = 1


def compacted_folder(hour: Hour) -> str:
    return f"compacted/{hour.path}"


def manifest_path(hour: Hour) -> str:
    return f"{compacted_folder(hour)}/current.json"


def read_manifest(store: Store, hour: Hour) -> dict | None:
    try:
        body = json.loads(store.get(manifest_path(hour)))
    except NotFound:
        return None
    except ValueError:
        log.warning("compaction manifest %s is malformed: ignored", manifest_path(hour))
        return None
    if not isinstance(body, dict) or body.get("format") != FORMAT:
        return None
    return body


def usable_manifest(store: Store, hour: Hour, raw: Sequence[str]) -> dict | None:
    """The hour's compaction if it can stand for the raw files it covers: every file it covers
    is still there (else the raw files are read)."""
    if len(raw) < MIN_FILES:
        return None
    manifest = read_manifest(store, hour)
    if manifest is None:
        return None
    present = set(raw)
    if not all(s["path"] in present for s in manifest["sources"]):
        return None
    return manifest


def files_for(manifest: dict, wanted: list[Sensor] | None) -> list[dict]:
    """The compacted files whose sensor range holds a wanted sensor (``wanted`` sorted)."""
    files = manifest["files"]
    if wanted is None:
        return list(files)
    keys = [(s.device, s.tag) for s in wanted]
    out = []
    for f in files:
        first = tuple(f["first"].split("/", 1))
        last = tuple(f["last"].split("/", 1))
        if bisect.bisect_left(keys, first) < bisect.bisect_right(keys, last):
            out.append(f)
    return out
