"""The model registry: one model per sensor, stored in a safe format with a manifest.

Models are data, not code. The store keeps every model as a skops file, loaded with an explicit
allowlist of scikit-learn, NumPy and SciPy types; a pickle is only ever read on import, and only
when the user passed ``--trust-pickle``. Each model has a manifest beside it (version, sha256,
scikit-learn version, trained-on range, created), and a model whose bytes no longer match its
manifest's hash is refused.

Layout: ``models/{Device}/{Tag}.skops`` and ``models/{Device}/{Tag}.json``.
"""

from __future__ import annotations

import hashlib
import io
import json
import warnings
import zipfile
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from fleetscore.core.hours import Hour
from fleetscore.core.sensors import Sensor, is_valid_id, sensors_of
from fleetscore.errors import (
    InvalidIdError,
    ModelError,
    ModelNotFound,
    NotFound,
    UntrustedModelError,
    first_line,
)
from fleetscore.model.bank_saves import begin_save, end_save
from fleetscore.storage import Store

SKOPS_SUFFIX = ".skops"
PICKLE_SUFFIXES = (".pkl", ".pickle", ".joblib")
# Every (type, skops node kind) the estimators fleetscore accepts are made of: OneClassSVM,
# IsolationForest, LocalOutlierFactor(novelty=True), EllipticEnvelope and SGDOneClassSVM, alone
# or after a StandardScaler, RobustScaler, MinMaxScaler or MaxAbsScaler in a Pipeline
# (tests/model/test_registry.py rebuilds this list from those estimators and checks it is exact).
# An exact list, never a module prefix: skops constructs a node's type with arguments from the
# file, so trusting "numpy.*" trusts numpy.testing.runstring, which calls exec.
TRUSTED_NODES: frozenset[tuple[str, str]] = frozenset({
    ("builtins.dict", "DictNode"),
    ("builtins.list", "ListNode"),
    ("builtins.tuple", "TupleNode"),
    ("builtins.str", "TypeNode"),
    ("builtins.str", "JsonNode"),
    ("builtins.int", "JsonNode"),
    ("builtins.float", "JsonNode"),
    ("builtins.bool", "JsonNode"),
    ("builtins.NoneType", "JsonNode"),
    ("numpy.ndarray", "NdArrayNode"),
    ("numpy.float64", "NdArrayNode"),
    ("numpy.float32", "NdArrayNode"),
    ("numpy.int64", "NdArrayNode"),
    ("numpy.int32", "NdArrayNode"),
    ("sklearn.pipeline.Pipeline", "ObjectNode"),
    ("sklearn.preprocessing._data.StandardScaler", "ObjectNode"),
    ("sklearn.preprocessing._data.RobustScaler", "ObjectNode"),
    ("sklearn.preprocessing._data.MinMaxScaler", "ObjectNode"),
    ("sklearn.preprocessing._data.MaxAbsScaler", "ObjectNode"),
    ("sklearn.svm._classes.OneClassSVM", "ObjectNode"),
    ("sklearn.ensemble._iforest.IsolationForest", "ObjectNode"),
    ("sklearn.tree._classes.ExtraTreeRegressor", "ObjectNode"),
    ("sklearn.tree._tree.Tree", "TreeNode"),
    ("sklearn.neighbors._lof.LocalOutlierFactor", "ObjectNode"),
    ("sklearn.neighbors._kd_tree.KDTree", "ObjectNode"),
    ("sklearn.metrics._dist_metrics.EuclideanDistance64", "ObjectNode"),
    ("sklearn.covariance._elliptic_envelope.EllipticEnvelope", "ObjectNode"),
    ("sklearn.linear_model._stochastic_gradient.SGDOneClassSVM", "ObjectNode"),
    ("sklearn.linear_model._sgd_fast.Hinge", "LossNode"),
})


@dataclass(frozen=True)
class ModelManifest:
    device: str
    tag: str
    version: int
    sha256: str
    format: str
    estimator: str
    sklearn_version: str
    trained_on: dict[str, str] | None
    created: str
    source: str

    @property
    def sensor(self) -> Sensor:
        return Sensor(self.device, self.tag)

    def to_json(self) -> bytes:
        return json.dumps(asdict(self), indent=1).encode()

    @classmethod
    def from_json(cls, data: bytes, path: str) -> ModelManifest:
        try:
            manifest = cls(**json.loads(data))
        except (ValueError, TypeError, RecursionError) as exc:
            raise ModelError(f"model manifest {path} is malformed: {first_line(exc)}") from exc
        if not (isinstance(manifest.sha256, str) and isinstance(manifest.version, int)
                and isinstance(manifest.created, str)):
            raise ModelError(f"model manifest {path} is malformed: a field has the wrong type")
        return manifest


def model_path(sensor: Sensor) -> str:
    return f"models/{sensor.path}{SKOPS_SUFFIX}"


def manifest_path(sensor: Sensor) -> str:
    return f"models/{sensor.path}.json"


def list_models(store: Store) -> set[Sensor]:
    """Sensors that have a model (a manifest) in the store."""
    pairs = []
    for path in store.list("models"):
        if path.endswith(".json"):
            parts = path.split("/")
            if len(parts) == 3:
                pairs.append((parts[1], parts[2][: -len(".json")]))
    # Files with ids no sensor can have are not models (as before): skipped, not refused.
    devices = {d for d, _ in pairs if is_valid_id(d)}
    tags = {t for _, t in pairs if is_valid_id(t)}
    return set(sensors_of((d, t) for d, t in pairs if d in devices and t in tags))


def _sklearn_version() -> str:
    import sklearn

    return sklearn.__version__


def check_estimator(estimator: Any, name: str) -> None:
    if not callable(getattr(estimator, "predict", None)):
        raise ModelError(f"{name}: {type(estimator).__name__} has no predict(); expected an "
                         "outlier detector such as Pipeline(StandardScaler, OneClassSVM)")
    features = getattr(estimator, "n_features_in_", 1)
    if features != 1:
        raise ModelError(f"{name}: the model expects {features} features; fleetscore scores one "
                         "feature per point (the window's mean value)")


def dumps_model(estimator: Any) -> bytes:
    import skops.io as sio

    return sio.dumps(estimator)


def skops_nodes(data: bytes, name: str) -> set[tuple[str, str]]:
    """Every (type, node kind) a skops file names, read from its schema without loading it."""
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            schema = json.loads(archive.read("schema.json"))
    except (zipfile.BadZipFile, KeyError, ValueError, OSError, RecursionError) as exc:
        raise ModelError(f"{name}: not a readable skops file ({_first_line(exc)})") from exc
    found: set[tuple[str, str]] = set()
    stack: list[Any] = [schema]
    while stack:  # a loop, not recursion: a crafted schema may nest deeply
        node = stack.pop()
        if isinstance(node, dict):
            if "__class__" in node or "__loader__" in node:
                found.add((f"{node.get('__module__')}.{node.get('__class__')}",
                           str(node.get("__loader__"))))
            stack.extend(node.values())
        elif isinstance(node, list):
            stack.extend(node)
    return found


def check_skops_types(data: bytes, name: str) -> list[str]:
    """The file's type names, all on TRUSTED_NODES; UntrustedModelError names the others."""
    nodes = skops_nodes(data, name)
    foreign = sorted(f"{t} ({kind})" for t, kind in nodes - TRUSTED_NODES)
    if foreign:
        raise UntrustedModelError(
            f"{name}: refused, the file names types or functions that no accepted estimator "
            f"is made of: {', '.join(foreign[:5])}")
    return sorted({t for t, _ in nodes})


def loads_model(data: bytes, name: str) -> Any:
    """Load skops bytes whose every node is on TRUSTED_NODES (checked before skops reads it)."""
    import skops.io as sio

    trusted = check_skops_types(data, name)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return sio.load(io.BytesIO(data), trusted=trusted)
    except Exception as exc:  # noqa: BLE001 - skops raises many types for damaged files
        raise ModelError(f"{name}: cannot load the skops file ({_first_line(exc)})") from exc


def save_model(
    store: Store, sensor: Sensor, estimator: Any, *, source: str,
    trained_on: tuple[Hour, Hour] | None = None,
) -> ModelManifest:
    check_estimator(estimator, str(sensor))
    data = dumps_model(estimator)
    check_skops_types(data, str(sensor))  # never store a model fleetscore would refuse to load
    previous = _read_manifest(store, sensor)
    manifest = ModelManifest(
        device=sensor.device,
        tag=sensor.tag,
        version=(previous.version + 1) if previous else 1,
        sha256=hashlib.sha256(data).hexdigest(),
        format="skops",
        estimator=describe(estimator),
        sklearn_version=_sklearn_version(),
        trained_on={"from": str(trained_on[0]), "to": str(trained_on[1])} if trained_on else None,
        created=datetime.now(UTC).isoformat(timespec="microseconds"),
        source=source,
    )
    # Model first, manifest last: the manifest is what makes a model visible. Around both,
    # the bank's protocol (bank.seal): a marker and no index before, no index and then no
    # marker after, so no sealed index ever vouches for the model this replaces. A save that
    # fails keeps its marker: its sensor stays checked against its manifest.
    marker = begin_save(store, sensor)
    store.put(model_path(sensor), data)
    store.put(manifest_path(sensor), manifest.to_json())
    end_save(store, marker)
    return manifest


def describe(estimator: Any) -> str:
    steps = getattr(estimator, "steps", None)
    if steps:
        return f"Pipeline({', '.join(type(step).__name__ for _, step in steps)})"
    return type(estimator).__name__


def _read_manifest(store: Store, sensor: Sensor) -> ModelManifest | None:
    path = manifest_path(sensor)
    try:
        return ModelManifest.from_json(store.get(path), path)
    except NotFound:
        return None


def read_manifest(store: Store, sensor: Sensor) -> ModelManifest:
    manifest = _read_manifest(store, sensor)
    if manifest is None:
        raise ModelNotFound(f"sensor {sensor} has no model")
    return manifest


def stored_model_bytes(store: Store, sensor: Sensor) -> bytes:
    """The sensor's model file, checked against its manifest's sha256; ModelError (or
    ModelNotFound) names the file that is missing, damaged or replaced."""
    manifest = read_manifest(store, sensor)
    try:
        data = store.get(model_path(sensor))
    except NotFound as exc:
        raise ModelNotFound(f"sensor {sensor}: model file {model_path(sensor)} is missing") from exc
    digest = hashlib.sha256(data).hexdigest()
    if digest != manifest.sha256:
        raise ModelError(
            f"sensor {sensor}: model file {model_path(sensor)} does not match its manifest "
            f"(sha256 {digest[:12]} != {manifest.sha256[:12]}, {len(data)} bytes): damaged or "
            "replaced; retrain or re-import it")
    return data


def load_model(store: Store, sensor: Sensor) -> Any:
    estimator = loads_model(stored_model_bytes(store, sensor), f"sensor {sensor}")
    check_estimator(estimator, f"sensor {sensor}")
    return estimator


def model_problem(store: Store, sensor: Sensor) -> str | None:
    """Why the sensor's stored model cannot be loaded (its manifest or file damaged or gone),
    naming the file; None when it is sound. Nothing in the file is run or constructed."""
    try:
        check_skops_types(stored_model_bytes(store, sensor), model_path(sensor))
    except ModelNotFound as exc:
        return str(exc) if model_path(sensor) in str(exc) else \
            f"model manifest {manifest_path(sensor)} is missing"
    except ModelError as exc:
        return str(exc)
    return None


# --- import ---------------------------------------------------------------------------------


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
            manifest = save_model(store, sensor, estimator, source=f"import:{name}")
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


def _first_line(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {first_line(exc, 200)}"


def newest_model_time(store: Store) -> str | None:
    """When the most recent model was saved (ISO, UTC), or None without models: an hour
    scored before it is not scored with the current models."""
    times = [read_manifest(store, sensor).created for sensor in list_models(store)]
    return max(times) if times else None
