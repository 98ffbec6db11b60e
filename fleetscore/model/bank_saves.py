"""The save side of the bank's consistency protocol (``bank.seal`` states it whole): where
the bank's index lives, the marker a model save leaves while it writes, and the index deletions
around it. The model registry (``models.save_model``) calls ``begin_save`` and ``end_save``; the
bank reads the markers when it seals. Below both, so neither imports the other.
"""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime, timedelta

from fleetscore.core.sensors import Sensor
from fleetscore.errors import NotFound
from fleetscore.storage import Store

BANK_FOLDER = "bank"  # beside models/, never inside: a device could be called "bank"
INDEX_PATH = f"{BANK_FOLDER}/index.json"
MODELS_PATH = f"{BANK_FOLDER}/models.json"  # the sensors with a model, as the index saw them
# Their files' versions when the bank was built: read by the registry check only, beside the
# run (kept out of models.json, which planning reads).
VERSIONS_PATH = f"{BANK_FOLDER}/versions.json"


def invalidate(store: Store) -> None:
    """No index. (Stores order a plain deletion against a compare-and-swap, so it cannot fall
    inside the seal's check and write and be undone.)"""
    store.delete(INDEX_PATH)


SAVING_FOLDER = f"{BANK_FOLDER}/saving"  # a marker a model save in progress
SAVE_GRACE = timedelta(hours=1)  # no save of one model takes this long


def begin_save(store: Store, sensor: Sensor, now: datetime | None = None) -> str:
    """Before a model's files are written: its marker, then no index (see ``seal``)."""
    # One flat folder ('~' is in no id): a save makes and removes no folder of its own, which
    # two training workers saving at once would otherwise contend on in the file system.
    marker = f"{SAVING_FOLDER}/{sensor.device}~{sensor.tag}~{uuid.uuid4().hex}.json"
    started = (now or datetime.now(UTC)).isoformat()
    store.put(marker, json.dumps({"sensor": str(sensor), "started": started}).encode())
    invalidate(store)
    return marker


def end_save(store: Store, marker: str) -> None:
    """After a model's files are written: no index, then no marker (the order matters)."""
    invalidate(store)
    store.delete(marker)


def saving(store: Store) -> set[str]:
    """``Device/Tag`` of every model whose save has a marker (in progress, or died)."""
    out = set()
    for path in store.list(SAVING_FOLDER):
        parts = path.rpartition("/")[2].split("~")
        if len(parts) == 3:
            out.add(f"{parts[0]}/{parts[1]}")
        elif len(folders := path.split("/")) == 5:  # a marker an earlier version left
            out.add(f"{folders[2]}/{folders[3]}")
    return out


def drop_stale_saves(store: Store, now: datetime) -> None:
    """Remove the markers of saves that began more than SAVE_GRACE ago (they died)."""
    for path in list(store.list(SAVING_FOLDER)):
        try:
            started = datetime.fromisoformat(json.loads(store.get(path))["started"])
        except (NotFound, ValueError, KeyError, TypeError):
            continue  # unreadable: its sensor stays checked, the safe side
        if now - started > SAVE_GRACE:
            store.delete(path)
