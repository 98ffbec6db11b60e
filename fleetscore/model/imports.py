"""Importing model files: a folder of ``{Device}_{Tag}.skops`` (or the reference's
``model_{Device}_{Tag}``) files, or one file, each a new champion version of its sensor. Pickles
only when the user trusts them, stored as skops so they are never read again."""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fleetscore.core.sensors import Sensor, is_valid_id
from fleetscore.errors import InvalidIdError, ModelError, UntrustedModelError
from fleetscore.model.registry import (
    PICKLE_SUFFIXES,
    SKOPS_SUFFIX,
    ModelManifest,
    _first_line,
    check_estimator,
    dumps_model,
    loads_model,
)
from fleetscore.model.versions import manifest_of, save_estimator
from fleetscore.storage import Store


@dataclass(frozen=True)
class ImportProblem:
    file: str
    reason: str


@dataclass(frozen=True)
class ImportResult:
    imported: tuple[ModelManifest, ...]
    refused: tuple[ImportProblem, ...]  # pickles without trust, untrusted types
    failed: tuple[ImportProblem, ...]  # unreadable, unusable, badly named


def sensor_from_filename(
    stem: str, known: set[Sensor] | Callable[[], set[Sensor]] | None = None
) -> Sensor:
    """``{Device}_{Tag}`` or ``model_{Device}_{Tag}`` (the reference's naming).

    Ids may contain '_', so a name can split several ways; sensors known to the store break
    the tie, and a name that stays ambiguous is refused rather than guessed.
    """
    stems = [stem[len("model_") :], stem] if stem.startswith("model_") else [stem]
    for candidate in stems:
        splits = []
        for i, ch in enumerate(candidate):
            if ch == "_" and is_valid_id(candidate[:i]) and is_valid_id(candidate[i + 1 :]):
                splits.append(Sensor(candidate[:i], candidate[i + 1 :]))
        if len(splits) > 1 and known:
            # Only an ambiguous name needs the store's sensors (``known`` may be a callable,
            # so a store's arrivals are read only when a name needs them).
            known = known() if callable(known) else known
            matching = [s for s in splits if s in known]
            if len(matching) == 1:
                return matching[0]
        if len(splits) == 1:
            return splits[0]
        if len(splits) > 1:
            options = " or ".join(str(s) for s in splits[:3])
            raise InvalidIdError(f"ambiguous name: could be {options}; import the file alone "
                                 "and name its sensor: fleetscore models import FILE --sensor "
                                 "DEVICE/TAG")
    raise InvalidIdError("name is not {Device}_{Tag} or model_{Device}_{Tag}")


def model_files(path: str | Path) -> list[Path]:
    """The model files a folder holds (by suffix), or the one file given."""
    path = Path(path)
    if path.is_file():
        return [path]
    return sorted(p for p in path.iterdir() if p.is_file()
                  and p.suffix.lower() in (SKOPS_SUFFIX, *PICKLE_SUFFIXES))


def import_models(
    store: Store, directory: str | Path, *, trust_pickle: bool = False,
    known: set[Sensor] | Callable[[], set[Sensor]] | None = None, sensor: Sensor | None = None,
) -> ImportResult:
    """Import a folder of model files, or one file; ``sensor`` names the sensor of a single
    file whose name does not say it unambiguously."""
    if callable(known):
        known = _once(known)
    imported: list[ModelManifest] = []
    refused: list[ImportProblem] = []
    failed: list[ImportProblem] = []
    files = model_files(directory)
    if sensor is not None and len(files) != 1:
        from fleetscore.errors import UsageError

        raise UsageError("--sensor names the sensor of one model file: give a file, not a folder")
    named = sensor
    for file in files:
        name = file.name
        try:
            sensor = named or sensor_from_filename(file.stem, known)
        except InvalidIdError as exc:
            failed.append(ImportProblem(name, str(exc)))
            continue
        is_pickle = file.suffix.lower() in PICKLE_SUFFIXES
        if is_pickle and not trust_pickle:
            refused.append(ImportProblem(
                name, "pickle files can run arbitrary code: refused without --trust-pickle"))
            continue
        try:
            estimator = _load_trusted_pickle(file) if is_pickle else loads_model(file.read_bytes(), name)
            check_estimator(estimator, name)
            if is_pickle:
                # Stored as skops, so the pickle is never read again; types outside the
                # allowlist would make it unloadable later, so refuse them now.
                loads_model(dumps_model(estimator), name)
            manifest = manifest_of(sensor, save_estimator(
                store, sensor, estimator, source=f"import:{name}", role="champion", by="import"))
        except UntrustedModelError as exc:
            refused.append(ImportProblem(name, _after_name(str(exc), name)))
            continue
        except ModelError as exc:
            failed.append(ImportProblem(name, _after_name(str(exc), name)))
            continue
        imported.append(manifest)
    return ImportResult(tuple(imported), tuple(refused), tuple(failed))


def _once(produce: Callable[[], set[Sensor]]) -> Callable[[], set[Sensor]]:
    cache: list[set[Sensor]] = []

    def get() -> set[Sensor]:
        if not cache:
            cache.append(produce())
        return cache[0]

    return get


def _load_trusted_pickle(file: Path) -> Any:
    import joblib

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return joblib.load(file)
    except Exception as exc:  # noqa: BLE001 - unpickling raises anything
        raise ModelError(f"{file.name}: cannot load the pickle ({_first_line(exc)})") from exc


def _after_name(message: str, name: str) -> str:
    prefix = f"{name}: "
    return message[len(prefix) :] if message.startswith(prefix) else message
