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
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Any

from fleetscore.core.hours import Hour
from fleetscore.core.sensors import Sensor, is_valid_id, sensors_of
from fleetscore.errors import (
    ModelError,
    ModelNotFound,
    NotFound,
    UntrustedModelError,
    first_line,
)
from fleetscore.model.bank_saves import begin_save, end_save
from fleetscore.model.features import Detector, width
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
    # When this version became the sensor's champion (a promote or a rollback of an older
    # version is later than its creation): hours scored before it are scored by another model.
    champion_since: str = ""
    features: tuple[str, ...] = ()  # derived features the model sees (model/features.py)

    @property
    def sensor(self) -> Sensor:
        return Sensor(self.device, self.tag)

    def to_json(self) -> bytes:
        return json.dumps(asdict(self), indent=1).encode()

    @classmethod
    def from_json(cls, data: bytes, path: str) -> ModelManifest:
        try:
            body = json.loads(data)
            manifest = cls(**{**body, "features": tuple(body.get("features", ()))})
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


def sklearn_version() -> str:
    import sklearn

    return sklearn.__version__


def check_estimator(estimator: Any, name: str, features: Sequence[str] = ()) -> None:
    """A model fleetscore can score: it predicts, and it expects the value plus ``features``."""
    if not callable(getattr(estimator, "predict", None)):
        raise ModelError(f"{name}: {type(estimator).__name__} has no predict(); expected an "
                         "outlier detector such as Pipeline(StandardScaler, OneClassSVM)")
    expects = getattr(estimator, "n_features_in_", 1)
    if expects != width(features):
        given = f"the value and {', '.join(features)}" if features else \
            "one feature per point (the window's mean value)"
        raise ModelError(f"{name}: the model expects {expects} features; fleetscore gives it "
                         f"{given}")


def dumps_model(estimator: Any) -> bytes:
    """The estimator as a skops file: ``skops.io.dumps``'s own steps (the pinned skops's
    ``_save``), with the schema written as compact JSON. skops indents it, which sends
    Python's json to its pure-Python encoder: two thirds of a model's save, the largest cost
    of training. The file is the same skops file to every reader (JSON ignores the
    whitespace; tests/model/test_registry.py compares the parsed schema with skops' own).
    Deflated (level 1), as skops' ``compression`` option would: an IsolationForest's
    hundred trees take a quarter of their stored bytes (docs/benchmarks.md)."""
    import skops
    import skops.io  # noqa: F401 - registers the get_state dispatch functions
    from skops.io._utils import SaveContext, get_state

    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED,
                         compresslevel=1) as archive:
        context = SaveContext(zip_file=archive)
        state = get_state(estimator, context)
        context.clear_memo()
        state["protocol"] = context.protocol
        state["_skops_version"] = skops.__version__
        archive.writestr("schema.json", json.dumps(state, separators=(",", ":")))
    return buffer.getvalue()


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
        sklearn_version=sklearn_version(),
        trained_on={"from": str(trained_on[0]), "to": str(trained_on[1])} if trained_on else None,
        created=datetime.now(UTC).isoformat(timespec="microseconds"),
        source=source,
    )
    # Model first, manifest last: the manifest is what makes a model visible. Around both,
    # the bank's protocol (bank.seal): a marker and no index before, no index and then no
    # marker after, so no sealed index ever vouches for the model this replaces. A save that
    # fails keeps its marker: its sensor stays checked against its manifest.
    write_champion(store, sensor, data, manifest)
    return manifest


def write_champion(store: Store, sensor: Sensor, data: bytes, manifest: ModelManifest) -> None:
    """The sensor's champion view: the model file, then its manifest (what makes it
    visible), inside the bank's save protocol."""
    marker = begin_save(store, sensor)
    store.put(model_path(sensor), data)
    store.put(manifest_path(sensor), manifest.to_json())
    end_save(store, marker)


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


def stored_model_bytes(store: Store, sensor: Sensor,
                       manifest: ModelManifest | None = None) -> bytes:
    """The sensor's model file, checked against its manifest's sha256 (``manifest``: already
    read); ModelError (or ModelNotFound) names the file that is missing, damaged or replaced."""
    manifest = manifest or read_manifest(store, sensor)
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
    return load_detector(store, sensor).estimator


def load_detector(store: Store, sensor: Sensor) -> Detector:
    """The sensor's champion and the features it sees, checked against its manifest."""
    manifest = read_manifest(store, sensor)
    estimator = loads_model(stored_model_bytes(store, sensor, manifest), f"sensor {sensor}")
    check_estimator(estimator, f"sensor {sensor}", manifest.features)
    return Detector(estimator, manifest.features)


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


def _first_line(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {first_line(exc, 200)}"


def newest_model_time(store: Store) -> str | None:
    """When the most recent champion took its place (saved, promoted or rolled back; ISO,
    UTC), or None without models: an hour scored before it is not scored with the current
    models."""
    manifests = [read_manifest(store, sensor) for sensor in list_models(store)]
    times = [m.champion_since or m.created for m in manifests]
    return max(times) if times else None
