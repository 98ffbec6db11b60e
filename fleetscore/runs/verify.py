"""``fleetscore verify``: find every store object that is damaged, gone or changed after it was
written, and name it.

Every file fleetscore writes for later use is checked two ways: its shape (a manifest, record
or index that no longer parses, or parses to the wrong structure) and, where one is recorded,
its sha256: models in their manifests, window parts in their arrival records (hour parts in
hour records, day parts in day records, ``arrivals/YYYY/MM/DD/day/``: both carry ``part`` and
``sha256``), predictions in the run manifest. Objects that point at each other are checked
both ways: a model without a manifest, a window part without an arrival record and an hour's
predictions that no run manifest lists are named too. Each object is read once; one damaged
object never stops the check of the others.
"""

from __future__ import annotations

import hashlib
import json
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass

from fleetscore.contracts import RunManifest
from fleetscore.core.hours import Hour
from fleetscore.errors import FleetscoreError, NotFound
from fleetscore.model.challengers import Pointer, read_pointers
from fleetscore.model.registry import ModelManifest, check_skops_types, list_models, manifest_path, model_path
from fleetscore.model.versions import (
    History,
    challenger_path,
    champion_view_matches,
    histories,
    version_path,
)
from fleetscore.runs.lifecycle import manifest_paths
from fleetscore.storage import Store


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


def _json(store: Store, path: str) -> object:
    """The parsed file, or a Problem saying why it is not JSON (NotFound passes through)."""
    try:
        return json.loads(store.get(path))
    except (ValueError, RecursionError) as exc:
        return Problem(path, f"is damaged: not JSON ({type(exc).__name__})")


def _models(store: Store) -> Iterator[Problem | None]:
    paths = list(store.list("models"))
    manifests = {p for p in paths if p.endswith(".json")}
    for path in sorted(paths):
        if path.endswith(".skops") and f"{path[: -len('.skops')]}.json" not in manifests:
            yield Problem(f"{path[: -len('.skops')]}.json",
                          f"is missing: the model file {path} has no manifest")
    for sensor in sorted(list_models(store)):
        path = manifest_path(sensor)
        try:
            manifest = ModelManifest.from_json(store.get(path), path)
            data = store.get(model_path(sensor))
            if hashlib.sha256(data).hexdigest() != manifest.sha256:
                yield _check(store, model_path(sensor), manifest.sha256, f"the model of {sensor}")
            else:
                check_skops_types(data, model_path(sensor))
                yield None
        except NotFound:
            yield Problem(model_path(sensor), f"the model of {sensor} is missing")
        except FleetscoreError as exc:
            yield Problem(path, str(exc))


def _bank(store: Store) -> Iterator[Problem | None]:
    from fleetscore.model.bank import INDEX_PATH, MODELS_PATH, VERSIONS_PATH, Bank

    shapes = {INDEX_PATH: "shards", MODELS_PATH: "devices", VERSIONS_PATH: "versions"}
    for path, field in shapes.items():
        try:
            body = _json(store, path)
        except NotFound:
            continue  # no bank: the plain path scores every sensor (`models bank` compiles)
        if isinstance(body, Problem):
            yield body
        elif not isinstance(body, dict) or not isinstance(body.get(field), list):
            yield Problem(path, "is damaged: not a bank file of this version")
        elif path == INDEX_PATH:
            for shard in body["shards"]:
                try:
                    Bank.decode(store.get(shard["path"]))
                except NotFound:
                    yield Problem(shard["path"], "bank shard is missing (`fleetscore models "
                                                 "bank` rebuilds it)")
                except (ValueError, KeyError, TypeError, OSError, zipfile.BadZipFile) as exc:
                    yield Problem(shard.get("path", INDEX_PATH) if isinstance(shard, dict)
                                  else INDEX_PATH, f"bank shard is damaged ({type(exc).__name__}"
                                  "; `fleetscore models bank` rebuilds it)")


def _windows(store: Store) -> Iterator[Problem | None]:
    recorded = set()
    for path in store.list("arrivals"):
        record = _json(store, path)
        if isinstance(record, Problem):
            yield record
            continue
        if not isinstance(record, dict) or not isinstance(record.get("sensors", []), list):
            yield Problem(path, "arrival record is damaged: not a record of this version")
            continue
        if record.get("part"):
            recorded.add(record["part"])
            yield _check(store, record["part"], record.get("sha256"), "window file")
    for path in store.list("windows"):
        # Only ingest's own parts (``part-<source>.parquet``) have a record naming them: the
        # files Stream Analytics writes are recorded by their events, which name no file.
        if path.rsplit("/", 1)[-1].startswith("part-") and path.endswith(".parquet") \
                and path not in recorded:
            yield Problem(path, "window file has no arrival record: its record under "
                                "arrivals/ is missing (ingest its source again)")


def _runs(store: Store) -> Iterator[Problem | None]:
    listed, files, exact = set(), set(), set()
    for path in manifest_paths(store):
        try:
            manifest = RunManifest.decode(store.get(path), path)
        except FleetscoreError as exc:
            yield Problem(path, str(exc))
            listed.add(path[len("runs/"): -len(".json")])  # its hour is named already
            continue
        listed.add(manifest.window)
        if manifest.predictions is not None:
            exact.add(manifest.window)
        for entry in manifest.predictions or ():
            files.add(entry.path)
            yield _check(store, entry.path, entry.sha256,
                         f"predictions of {manifest.window} ({entry.unit})")
    from fleetscore.data.predictions import predictions_folder

    stored = list(store.list("predictions"))
    yield from _strays(stored, files, exact)
    hours = {hour for p in stored if (hour := _hour_of(p)) is not None}
    for hour in sorted(hours, key=lambda h: h.index):
        if str(hour) not in listed:
            yield Problem(f"runs/{hour}.json", "run manifest is missing: "
                          f"{predictions_folder(hour)}/ holds predictions no manifest lists")


def _strays(stored: list[str], files: set[str], exact: set[str]) -> Iterator[Problem]:
    """Predictions files in an hour whose manifest lists its files but not them: left by a
    run stopped between promoting and writing its manifest. A rerun of the hour without a
    readable manifest would take them as visible, rows twice over."""
    for path in stored:
        hour = _hour_of(path)
        if path in files or hour is None or path.count("/") != 5:
            continue
        if str(hour) in exact:
            yield Problem(path, "predictions file no run manifest lists (a run stopped before "
                          f"its manifest): `fleetscore run --window {hour} --force` sweeps it")


def _hour_of(path: str) -> Hour | None:
    """The hour of a file under ``predictions/YYYY/MM/DD/HH/``; None for any other path."""
    parts = path.split("/")
    if len(parts) < 6:
        return None
    try:
        return Hour.parse(f"{parts[1]}-{parts[2]}-{parts[3]}T{parts[4]}")
    except FleetscoreError:
        return None


def _versions(store: Store) -> Iterator[Problem | None]:
    """Every version file against its history's sha256, the history's shape, the champion
    view against the history's champion, and the challenger pointers against the
    histories' challengers."""
    pointers = {p.key: p for p in read_pointers(store)}
    named: set[str] = set()
    for path, read in histories(store):
        try:
            history = read()
        except FleetscoreError as exc:
            yield Problem(path, str(exc).removeprefix(f"version history {path} "))
            continue
        yield None
        for version in history.versions:
            yield _check(store, version_path(history.sensor, version.number), version.sha256,
                         f"version {version.number} of {history.sensor}")
        if not champion_view_matches(store, history.sensor, history):
            yield Problem(manifest_path(history.sensor), "is not the champion its version "
                          f"history names ({path}): retrain, or promote or roll back a version")
        yield _pointer_problem(store, history, pointers, named)
    for key in sorted(set(pointers) - named):
        yield Problem(challenger_path(pointers[key].sensor), "names a challenger no version "
                      "history has: retrain the sensor, or delete the file")


def _pointer_problem(store: Store, history: History, pointers: dict[str, Pointer],
                     named: set[str]) -> Problem | None:
    """The sensor's challenger pointer against its history (a crash between the two)."""
    key = str(history.sensor)
    named.add(key)
    challenger, pointer = history.challenger, pointers.get(key)
    if challenger is None and pointer is None:
        return None
    if challenger is not None and pointer is not None \
            and (pointer.version, pointer.sha256) == (challenger.number, challenger.sha256):
        return None
    path = challenger_path(history.sensor)
    if pointer is None and store.exists(path):
        return Problem(path, "is damaged: not a challenger pointer")
    return Problem(path, f"does not match the challenger its version history names "
                   f"({'none' if challenger is None else f'v{challenger.number}'}): promote, "
                   "roll back or train a challenger again to rewrite it")


def verify(store: Store) -> tuple[int, list[Problem]]:
    """(objects checked, problems found)."""
    found = [*_models(store), *_versions(store), *_bank(store), *_windows(store),
             *_runs(store)]
    checked = len(found)
    return checked, [p for p in found if p is not None]
