"""The model bank: per-sensor one-class SVMs (alone or behind a scaler) compiled into packed
arrays, and the vectorized scoring of many sensors at once.

A one-feature one-class SVM is a handful of numbers: the scaler's affine map, the support
vectors, their dual coefficients, the intercept and the kernel's parameters. Scoring a unit's
sensors is then a few array operations over all of them (blocks of sensors padded to their
largest point and support-vector counts), instead of one scikit-learn call per sensor.

Only what is reproduced exactly is compiled. A model is compiled from its fitted attributes,
then the compiled copy and scikit-learn itself evaluate probe points (the support vectors, the
scaler's range, the training range's edges, random points); any disagreement beyond the
boundary tolerance and the model stays with scikit-learn, with the reason in ``BankStats``.

The bank is a derived, safe artifact: ``.npz`` shards read with ``allow_pickle=False``, each
entry recording the sha256 of the model bytes it was compiled from. ``load_bank`` returns an
entry only while that hash is still the model manifest's, so a model changed after its
compilation (by a save racing a rebuild, or an index left by an older fleetscore) is scored by
scikit-learn from the stored model, never from the old arrays. A sealed index vouches for
that without a manifest read a sensor (``seal`` gives the protocol and why it holds); an
unsealed one is checked entry by entry. ``rebuild_bank`` (run at the end of ``train`` and
``models import``) recompiles only the shards whose models changed (shards are named by their
models' hashes). A model file altered behind fleetscore's back (its manifest unchanged, not
re-imported) keeps being scored from what was compiled from its verified bytes;
``fleetscore verify`` reports such a file.

Labels are identical to scikit-learn's: libsvm predicts +1 only for a decision > 0, and points
whose decision is within ``BOUNDARY_TOLERANCE`` of 0 (or not finite), where the two float
computations could disagree, are decided again in libsvm's own order of operations
(``libsvm_decisions``), and by scikit-learn itself only where even that could round either way.
"""

from __future__ import annotations

import bisect
import functools
import hashlib
import io
import json
import math
import struct
import uuid
import warnings
import zipfile
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from fleetscore.core.sensor_codes import key_positions, sensor_keys
from fleetscore.core.sensors import Sensor, parse_sensors, sensor_columns, sorted_unique
from fleetscore.errors import Conflict, ModelError, NotFound
from fleetscore.model.bank_saves import (  # noqa: F401 - the protocol's names, also the bank's
    BANK_FOLDER,
    INDEX_PATH,
    MODELS_PATH,
    SAVE_GRACE,
    SAVING_FOLDER,
    VERSIONS_PATH,
    begin_save,
    drop_stale_saves,
    end_save,
    invalidate,
    saving,
)
from fleetscore.model.forest import CompiledForest, Forests, NearZero, compile_forest
from fleetscore.model.registry import (
    ModelManifest,
    check_estimator,
    list_models,
    loads_model,
    manifest_path,
    model_path,
    model_problem,
    newest_model_time,
    read_manifest,
)
from fleetscore.storage import Store
from fleetscore.storage.base import get_many

# Written into every shard and into the shard names: a shard of another format (an older
# fleetscore's, compiled without the probe check) is never decoded, only rebuilt. Format 3
# added the compiled IsolationForests beside the SVMs; a format 2 shard is read as one of no
# forests (what it holds, since format 2 compiled none), so the challenger bank's shards,
# named by their own format, stay readable; the champions' bank is renamed, so rebuilt.
# Format 4 stores a forest's cuts as float32 and drops the cuts between equal decisions
# (forest._compact); a format 3 shard's float64 cuts decide the same, so it stays readable.
# Format 5 keeps what scikit-learn's last steps need for the intervals near 0
# (forest.NearZero), so their points are settled without loading the model; in older shards
# scikit-learn settles them, as before.
BANK_FORMAT = 5
READABLE_FORMATS = ([2], [3], [4], [5])
SHARD_SENSORS = 1024  # a unit decodes only the shards holding its sensors
BOUNDARY_TOLERANCE = 1e-9
KERNELS = {"rbf": 0, "linear": 1, "poly": 2, "sigmoid": 3}
REBUILD_ROUNDS = 3  # rebuilds in a row while models keep changing, then no index at all
PROBE_RANDOM = 48
PROBE_SEED = 20240301  # fixed: compiling the same bytes always gives the same verdict


@dataclass(frozen=True)
class Compiled:
    """x -> clip(((x - mean) / scale) * mul + add, low, high), then the SVM's decision.

    The steps and their order are scikit-learn's own (StandardScaler and RobustScaler subtract
    then divide, MinMaxScaler multiplies then adds, then clips), and a step a scaler skips is
    the identity here (- 0, / 1, * 1, + 0 and clipping at infinities are exact), so the scaled
    value is bit for bit scikit-learn's."""

    kernel: int
    mean: float
    scale: float
    gamma: float
    coef0: float
    degree: float
    intercept: float
    support: np.ndarray  # scaled support vectors, float64
    dual: np.ndarray  # dual coefficients, float64
    mul: float = 1.0
    add: float = 0.0
    low: float = -math.inf
    high: float = math.inf


@dataclass(frozen=True)
class Verdict:
    """A model compiled, or the reason it stays with scikit-learn."""

    compiled: Compiled | None
    reason: str | None = None
    forest: CompiledForest | None = None  # an IsolationForest compiled (``compiled`` is None)


def compile_model(estimator) -> Compiled | None:
    """Packed parameters of a model the bank reproduces exactly; None otherwise."""
    return compile_verdict(estimator).compiled


def compile_verdict(estimator) -> Verdict:
    parts = _split_pipeline(estimator)
    if isinstance(parts, str):
        return Verdict(None, parts)
    scaler, svm = parts
    affine = _scaler_params(scaler) if scaler is not None else {"mean": 0.0, "scale": 1.0}
    if isinstance(affine, str):
        return Verdict(None, affine)
    svm_params = _svm_params(svm)
    if isinstance(svm_params, str):
        return Verdict(None, svm_params)
    compiled = Compiled(**svm_params, **affine)
    reason = probe_disagreement(estimator, scaler, compiled)
    return Verdict(None, reason) if reason else Verdict(compiled)


def compile_any(estimator) -> Verdict:
    """``compile_verdict`` for a OneClassSVM, ``forest.compile_forest`` for an IsolationForest."""
    from sklearn.ensemble import IsolationForest

    if type(estimator) is IsolationForest:
        forest, reason = compile_forest(estimator)
        return Verdict(None, reason, forest)
    return compile_verdict(estimator)


def _split_pipeline(estimator):
    """(scaler or None, svm), or why the shape is not one the bank compiles."""
    from sklearn.pipeline import Pipeline
    from sklearn.svm import OneClassSVM

    steps = [estimator]
    if isinstance(estimator, Pipeline):
        steps = [step for _, step in estimator.steps if step not in (None, "passthrough")]
    if not steps or type(steps[-1]) is not OneClassSVM:
        last = type(steps[-1]).__name__ if steps else "an empty pipeline"
        return f"{last} is not a OneClassSVM"
    if len(steps) > 2:
        return "a pipeline of more than one scaler and a OneClassSVM"
    return (steps[0] if len(steps) == 2 else None), steps[-1]


def _first(values) -> float:
    return float(np.asarray(values, dtype=np.float64).reshape(-1)[0])


def _scaler_params(scaler) -> dict | str:
    """The scaler's affine map, from its parameters (which steps it takes) and its fitted
    attributes (the numbers). mean_ exists even when with_mean=False: the parameters decide."""
    from sklearn.preprocessing import MaxAbsScaler, MinMaxScaler, RobustScaler, StandardScaler

    kind = type(scaler)
    if getattr(scaler, "n_features_in_", 1) != 1:
        return "a scaler fitted on more than one feature"
    p = scaler.get_params()
    if kind is StandardScaler:
        return {"mean": _first(scaler.mean_) if p["with_mean"] else 0.0,
                "scale": _first(scaler.scale_) if p["with_std"] else 1.0}
    if kind is RobustScaler:
        return {"mean": _first(scaler.center_) if p["with_centering"] else 0.0,
                "scale": _first(scaler.scale_) if p["with_scaling"] else 1.0}
    if kind is MinMaxScaler:
        low, high = (float(p["feature_range"][0]), float(p["feature_range"][1])) if p["clip"] \
            else (-math.inf, math.inf)
        return {"mean": 0.0, "scale": 1.0, "mul": _first(scaler.scale_),
                "add": _first(scaler.min_), "low": low, "high": high}
    if kind is MaxAbsScaler:
        low, high = (-1.0, 1.0) if p["clip"] else (-math.inf, math.inf)
        return {"mean": 0.0, "scale": _first(scaler.scale_), "low": low, "high": high}
    return f"{kind.__name__} is not a scaler the bank compiles"


def _svm_params(svm) -> dict | str:
    import scipy.sparse

    p = svm.get_params()
    kernel = p["kernel"]
    if not isinstance(kernel, str) or kernel not in KERNELS:
        return f"OneClassSVM with kernel {kernel if isinstance(kernel, str) else 'callable'!r}"
    if scipy.sparse.issparse(svm.support_vectors_):
        return "OneClassSVM fitted on sparse data"
    if svm.support_vectors_.shape[1] != 1 or getattr(svm, "n_features_in_", 1) != 1:
        return "OneClassSVM fitted on more than one feature"
    gamma = p["gamma"]
    if gamma == "auto":
        gamma = 1.0 / svm.n_features_in_
    elif gamma == "scale":
        # No public attribute keeps it: it came from the training data's variance, which the
        # model does not store. The probe check vouches for the value read here.
        gamma = svm._gamma
    return {"kernel": KERNELS[kernel], "gamma": float(gamma), "coef0": float(p["coef0"]),
            "degree": float(p["degree"]), "intercept": _first(svm.intercept_),
            "support": np.ascontiguousarray(svm.support_vectors_[:, 0], dtype=np.float64),
            "dual": np.ascontiguousarray(svm.dual_coef_[0], dtype=np.float64)}


def probe_points(scaler, compiled: Compiled) -> np.ndarray:
    """Where a compiled copy must agree with its model: the support vectors and the scaler's
    range mapped back to values (through the scaler's own inverse_transform), the edges of
    what the model was trained on, and random points around and far beyond them."""
    scaled = np.concatenate([compiled.support, [-3.0, -1.0, 0.0, 0.5, 1.0, 3.0]])
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore")
        values = (scaler.inverse_transform(scaled.reshape(-1, 1)).reshape(-1)
                  if scaler is not None else scaled.copy())
    edges = [getattr(scaler, name, None) for name in ("data_min_", "data_max_", "max_abs_")]
    values = np.concatenate([values, *(np.ravel(e) for e in edges if e is not None),
                             *(-np.ravel(e) for e in edges[2:] if e is not None)])
    values = values[np.isfinite(values)]
    lo, hi = (values.min(), values.max()) if len(values) else (-1.0, 1.0)
    width = max(hi - lo, abs(hi), abs(lo), 1.0)
    rng = np.random.default_rng(PROBE_SEED)
    spread = rng.uniform(lo - width, hi + width, PROBE_RANDOM)
    far = np.array([lo - 10 * width, hi + 10 * width, lo - 1e3 * width, hi + 1e3 * width, 0.0])
    with np.errstate(all="ignore"):
        probes = np.concatenate([values, spread, far])
    return probes[np.isfinite(probes)]  # scikit-learn refuses infinite input


def probe_disagreement(estimator, scaler, compiled: Compiled) -> str | None:
    """None when the compiled copy gives scikit-learn's decisions (within the boundary
    tolerance) and labels on every probe point; otherwise why not."""
    probes = probe_points(scaler, compiled)
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore")
        expected = np.asarray(estimator.decision_function(probes.reshape(-1, 1)), dtype=np.float64)
        labels = np.asarray(estimator.predict(probes.reshape(-1, 1)))
        [(decision, magnitude)] = decisions_with_magnitude([compiled], [probes])
    if not (np.isfinite(decision).all() and np.isfinite(expected).all()):
        return "OneClassSVM whose decisions are not finite on probe points"
    if (np.abs(decision - expected) > BOUNDARY_TOLERANCE * np.maximum(magnitude, 1.0)).any():
        return "OneClassSVM whose compiled decisions differ from scikit-learn's on probe points"
    settled = near_boundary(decision, magnitude)
    if ((decision > 0) != (labels == 1))[~settled].any():
        return "OneClassSVM whose compiled labels differ from scikit-learn's on probe points"
    return None


def compile_stored(store: Store, sensor: Sensor) -> tuple[str, Verdict]:
    """The sha256 of the model bytes read and the verdict on them. The bytes are checked
    against the manifest read just before them, so the hash names what was compiled."""
    manifest = read_manifest(store, sensor)
    try:
        data = store.get(model_path(sensor))
    except NotFound:
        return manifest.sha256, Verdict(None, "model file missing")
    sha = hashlib.sha256(data).hexdigest()
    if sha != manifest.sha256:
        return manifest.sha256, Verdict(None, "model file does not match its manifest")
    fresh = take_fresh(store, sensor, sha, manifest.features)
    if fresh is not None:
        return sha, fresh
    try:
        estimator = loads_model(data, f"sensor {sensor}")
        check_estimator(estimator, f"sensor {sensor}", manifest.features)
        if manifest.features:  # the bank compiles functions of the value alone
            return sha, Verdict(None, f"sees derived features ({', '.join(manifest.features)})")
        return sha, compile_any(estimator)
    except ModelError as exc:
        return sha, Verdict(None, f"cannot be loaded ({exc.kind})")
    except Exception as exc:  # noqa: BLE001 - a model's own bug: the plain path names it
        return sha, Verdict(None, f"cannot be compiled ({type(exc).__name__})")


# --- fresh verdicts: compiled where the model was fitted --------------------------------------
#
# Rebuilding the bank after a training loads every model file it wrote again, to compile it:
# for IsolationForests most of the rebuild. The training worker that fitted a model compiles
# it there and then (``verdict_of``) and keeps the verdict beside the bank (``save_fresh``):
# one small file a sensor, the latest model fitted, named by the sha256 of the bytes saved and
# the features fitted on. A rebuild takes it (``take_fresh``) only for exactly those bytes and
# features, and deletes it once taken; a verdict of other bytes is ignored (and replaced when
# the sensor is fitted again), so a fresh file never decides for a model it was not made from.

FRESH_FOLDER = f"{BANK_FOLDER}/fresh"


def fresh_path(sensor: Sensor) -> str:
    return f"{FRESH_FOLDER}/{sensor.device}/{sensor.tag}.npz"


def verdict_of(estimator, features: tuple[str, ...] = ()) -> Verdict:
    """What ``compile_stored`` decides of a model's bytes, decided of the estimator itself."""
    if features:
        return Verdict(None, f"sees derived features ({', '.join(features)})")
    try:
        return compile_any(estimator)
    except Exception as exc:  # noqa: BLE001 - as compile_stored: the plain path names it
        return Verdict(None, f"cannot be compiled ({type(exc).__name__})")


def save_fresh(store: Store, sensor: Sensor, sha: str, features: tuple[str, ...],
               verdict: Verdict) -> None:
    """Keep ``verdict`` on the model of bytes ``sha`` fitted on ``features`` for the next
    rebuild of the bank it goes into (the champions' or the challengers')."""
    compiled = verdict.compiled is not None or verdict.forest is not None
    store.put(fresh_path(sensor), encode_shard(
        [(sensor, sha, verdict.compiled)] if verdict.compiled is not None else [],
        [] if compiled else [verdict.reason or "not compiled"],
        [(sensor, sha, verdict.forest)] if verdict.forest is not None else [],
        extra={"fresh_sha256": np.array([sha], dtype="U64"),
               "fresh_features": np.array([",".join(features)], dtype="U64")}))


def take_fresh(store: Store, sensor: Sensor, sha: str, features: tuple[str, ...]
               ) -> Verdict | None:
    """The fresh verdict on exactly these bytes and features, deleted as it is taken; None
    when there is none (or it is of another model, or unreadable)."""
    path = fresh_path(sensor)
    try:
        with np.load(io.BytesIO(store.get(path)), allow_pickle=False) as z:
            _check_format(z)
            if z["fresh_sha256"].tolist() != [sha] \
                    or z["fresh_features"].tolist() != [",".join(features)]:
                return None
            bank = _decode_bank(z, sha=True)
            left = z["left"].tolist()
    except (NotFound, ValueError, KeyError, OSError, zipfile.BadZipFile):
        return None
    forest = bank.forests.get(sensor)
    verdict = (Verdict(bank[sensor]) if sensor in bank else Verdict(None, None, forest)
               if forest is not None else Verdict(None, left[0]) if left else None)
    if verdict is not None:
        store.delete(path)
    return verdict


# --- shards ---------------------------------------------------------------------------------


PARAMS = ("kernel", "mean", "scale", "gamma", "coef0", "degree", "intercept", "mul", "add",
          "low", "high")


def encode_shard(entries: list[tuple[Sensor, str, Compiled]], left: Iterable[str] = (),
                 forests: Iterable[tuple[Sensor, str, CompiledForest]] = (),
                 extra: Mapping[str, np.ndarray] | None = None) -> bytes:
    """``left``: why each of the shard's other models stays with scikit-learn (for the counts
    of a kept shard). ``forests``: its compiled IsolationForests, beside the SVMs.
    ``extra``: arrays of the caller's own (the challenger bank's pointers, a fresh verdict's
    hash), stored beside them."""
    packed = Bank.of(entries)  # the same arrays a unit loads
    trees = Forests.of(forests)
    forest_sensors = trees.ids.to_pylist()
    arrays = {
        "format": np.array([BANK_FORMAT], dtype=np.int64),
        "device": np.array([s.device for s, _, _ in entries], dtype="U64"),
        "tag": np.array([s.tag for s, _, _ in entries], dtype="U64"),
        "sha256": np.array([h for _, h, _ in entries], dtype="U64"),
        "params": packed.params, "offsets": packed.offsets, "support": packed.support,
        "dual": packed.dual, "left": np.array(list(left), dtype="U200"),
        "forest_device": np.array([k.split("/", 1)[0] for k in forest_sensors], dtype="U64"),
        "forest_tag": np.array([k.split("/", 1)[1] for k in forest_sensors], dtype="U64"),
        "forest_sha256": trees.sha.astype("U64"), "forest_offsets": trees.offsets,
        "forest_cuts": trees.cuts, "forest_decisions": trees.decisions,
        **_near_arrays(trees),
        **(extra or {}),
    }
    sink = io.BytesIO()
    np.savez(sink, **arrays)
    return sink.getvalue()


def _near_arrays(trees: Forests) -> dict[str, np.ndarray]:
    """The forests' intervals near 0 (``forest.NearZero``), when every forest keeps them."""
    near = trees.near
    if near is None:
        return {}
    return {"forest_params": near.params, "forest_near_offsets": near.offsets,
            "forest_near": near.interval, "forest_depths": near.depths}


def _decode_near(z) -> NearZero | None:
    """A shard's intervals near 0; None in shards before format 5, which kept none."""
    if "forest_near" not in z.files:
        return None
    return NearZero(z["forest_params"].reshape(-1, 2), z["forest_near_offsets"].astype(np.int64),
                    z["forest_near"].astype(np.int64), z["forest_depths"])


def _check_format(z) -> None:
    if "format" not in z.files or z["format"].tolist() not in READABLE_FORMATS:
        raise ValueError("a bank shard of another format")


def shard_left(data: bytes) -> list[str]:
    with np.load(io.BytesIO(data), allow_pickle=False) as z:
        _check_format(z)
        return z["left"].tolist()


@dataclass(frozen=True)
class BankStats:
    sensors: int
    compiled: int
    shards_written: int
    shards_kept: int
    left: tuple[tuple[str, int], ...] = ()  # (why, how many models) scored by scikit-learn


@dataclass(frozen=True)
class _Shard:
    entry: dict  # the index's entry
    written: bool
    left: tuple[str, ...]
    compiled_from: dict[Sensor, str | None]  # sha256 per sensor the shard was built for


def _group_key(group: list[Sensor], shas: dict[Sensor, str | None]) -> str:
    text = f"format {BANK_FORMAT}\n" + "\n".join(f"{s}:{shas[s]}" for s in group)
    return hashlib.sha256(text.encode()).hexdigest()


SHARD_PREFIX = f"{BANK_FOLDER}/shard-"


def _shard_path(key: str) -> str:
    return f"{SHARD_PREFIX}{key[:24]}.npz"


def _keep(store: Store, group: list[Sensor], shas: dict[Sensor, str | None], existing: set[str]
          ) -> _Shard | None:
    """The existing shard for these exact models, if it is whole and of this format."""
    key = _group_key(group, shas)
    path = _shard_path(key)
    if path not in existing:
        return None
    try:
        data = store.get(path)
        bank = Bank.decode(data)
        count, left = len(bank) + len(bank.forests), tuple(shard_left(data))
    except (NotFound, ValueError, KeyError, OSError, zipfile.BadZipFile):
        return None
    entry = {"key": key, "path": path, "first": str(group[0]), "last": str(group[-1]),
             "compiled": count}
    return _Shard(entry, False, left, {s: shas[s] for s in group})


def _build(store: Store, group: list[Sensor]) -> _Shard:
    entries, forests, left, shas = [], [], [], {}
    for sensor in group:
        try:
            sha, verdict = compile_stored(store, sensor)
        except ModelError:  # the manifest went away or broke: the plain path says why
            # None, as _manifest_hashes says for it: a broken manifest is not a change.
            sha, verdict = None, Verdict(None, "manifest missing or malformed")
        shas[sensor] = sha
        if verdict.compiled is not None:
            entries.append((sensor, sha, verdict.compiled))
        elif verdict.forest is not None:
            forests.append((sensor, sha, verdict.forest))
        else:
            left.append(verdict.reason or "not compiled")
    # Named by the hashes actually compiled, so a kept shard always holds what its name says.
    key = _group_key(group, shas)
    path = _shard_path(key)
    store.put(path, encode_shard(entries, left, forests))
    entry = {"key": key, "path": path, "first": str(group[0]), "last": str(group[-1]),
             "compiled": len(entries) + len(forests)}
    return _Shard(entry, True, tuple(left), shas)


def _manifests(store: Store, sensors: Iterable[Sensor]) -> dict[Sensor, ModelManifest | None]:
    """Each sensor's manifest now (None: no usable manifest). Read concurrently on a remote
    store: one request a sensor, the bank's exactness check."""
    sensors = list(sensors)
    paths = [manifest_path(s) for s in sensors]
    out: dict[Sensor, ModelManifest | None] = {}
    for sensor, path, data in zip(sensors, paths, get_many(store, paths, missing_ok=True),
                                  strict=True):
        try:
            out[sensor] = None if data is None else ModelManifest.from_json(data, path)
        except ModelError:
            out[sensor] = None
    return out


def _manifest_hashes(store: Store, sensors: Iterable[Sensor]) -> dict[Sensor, str | None]:
    """Each sensor's model hash as its manifest names it now (None: no usable manifest)."""
    return {s: m.sha256 if m is not None else None for s, m in _manifests(store, sensors).items()}


def _newest_champion(manifests: Iterable[ModelManifest | None]) -> str:
    return max((m.champion_since or m.created for m in manifests if m is not None), default="")


def newest_champion_time(store: Store) -> str | None:
    """When the most recent champion took its place (ISO, UTC; None without models): from
    the sealed bank, which read every manifest as it was built and vouches that none changed
    since; else from the manifests themselves (``registry.newest_model_time``)."""
    index = _read_index(store)
    if index and index.get("sealed") is True and not index.get("check") \
            and isinstance(index.get("newest_champion"), str):
        return index["newest_champion"] or None
    return newest_model_time(store)


def _rebuild_once(store: Store, shard_sensors: int
                  ) -> tuple[BankStats, dict, dict[Sensor, str | None]]:
    versions = model_versions(store)  # before the manifests are read: a later change shows
    sensors = sorted(list_models(store))
    nonce = uuid.uuid4().hex
    # Which sensors have a model, for planners: one read instead of a listing of models/.
    store.put(MODELS_PATH, models_list(nonce, sensors))
    if versions is not None:
        store.put(VERSIONS_PATH, versions_list(nonce, sensors, versions))
    read = _manifests(store, sensors)
    manifests = {s: m.sha256 if m is not None else None for s, m in read.items()}
    existing = set(store.list(BANK_FOLDER))
    shards: list[_Shard] = []
    for start in range(0, len(sensors), shard_sensors):
        group = sensors[start : start + shard_sensors]
        shards.append(_keep(store, group, manifests, existing) or _build(store, group))
    live = {s.entry["path"] for s in shards}
    for path in existing:  # the champions' shards only: bank/challengers/ is not ours
        if path.startswith(SHARD_PREFIX) and path.endswith(".npz") and path not in live:
            store.delete(path)
    # Unsealed: loaders check every entry against its manifest until rebuild_bank seals it.
    # The nonce makes this write a version of its own, so the seal's compare-and-swap fails
    # if anything replaced or deleted it meanwhile, even with the same shards.
    body = {"shards": [s.entry for s in shards], "rebuild": nonce, "sealed": False,
            "newest_champion": _newest_champion(read.values())}
    store.put(INDEX_PATH, json.dumps(body, indent=1).encode())
    left = Counter(reason for s in shards for reason in s.left)
    stats = BankStats(len(sensors), sum(s.entry["compiled"] for s in shards),
                      sum(s.written for s in shards), sum(not s.written for s in shards),
                      tuple(sorted(left.items(), key=lambda kv: (-kv[1], kv[0]))))
    return stats, body, {sensor: sha for s in shards for sensor, sha in s.compiled_from.items()}


def rebuild_bank(store: Store, *, shard_sensors: int = SHARD_SENSORS,
                 now: datetime | None = None) -> BankStats:
    """Compile every model into the bank, reusing the shards whose models did not change,
    then seal the index (see ``seal``)."""
    drop_stale_saves(store, now or datetime.now(UTC))
    for _ in range(REBUILD_ROUNDS):
        stats, body, built_from = _rebuild_once(store, shard_sensors)
        if seal(store, body, built_from):
            return stats
    invalidate(store)  # models keep changing: no index (the plain path) rather than a stale one
    return BankStats(stats.sensors, 0, stats.shards_written, stats.shards_kept,
                     (("models changed while the bank was built; run `fleetscore models bank` "
                       "again", stats.sensors),))


def seal(store: Store, body: dict, built_from: Mapping[Sensor, str | None]) -> bool:
    """Vouch for the index just written, so loaders need not read a manifest a sensor.

    The protocol (save_model's side is ``begin_save``/``end_save``): a save writes a marker,
    deletes the index, writes the model and its manifest, deletes the index again, then
    removes its marker. A rebuild writes the index, checks every manifest against what it
    compiled, lists the markers, and seals the index with a compare-and-swap on the version it
    wrote. A sealed index read at time I is then stale for a sensor only if a save of it
    wrote its manifest after the rebuild's check and has not yet deleted the index at I; such
    a save deleted the index before the rebuild wrote it (else the seal fails) and still had
    its marker when the rebuild listed them (it removes the marker after its last deletion),
    so the sensor is in the sealed index's ``check`` list and loaders read its manifest. (That a deletion
    never falls inside the seal's compare-and-swap is the store's promise: Blob storage
    checks If-Match as it writes; a directory store orders plain writes and deletions under
    the same lock.) A save that died mid-way
    leaves its marker: its sensor is checked until a rebuild more than SAVE_GRACE later drops
    the marker (by then the save is surely over: its manifest is final, and that rebuild
    reads it). That compares the saver's clock with the rebuilder's: clocks an hour apart, or
    a save paused for an hour, would drop a live marker. Returns False when the index changed or a model did:
    the caller rebuilds."""
    try:
        data, version = store.get_versioned(INDEX_PATH)
        if json.loads(data).get("rebuild") != body["rebuild"]:
            return False
    except (NotFound, ValueError):
        return False
    current = _manifest_hashes(store, built_from)
    if any(current[s] != sha for s, sha in built_from.items()):
        return False
    if list_models(store) != set(built_from):  # a model of a new sensor appeared meanwhile
        return False
    check = sorted(saving(store))
    sealed = {**body, "sealed": True, "check": check}
    try:
        store.put(INDEX_PATH, json.dumps(sealed, indent=1).encode(), if_match=version)
    except (Conflict, NotFound):
        return False
    return True


def sensors_with_models(store: Store) -> set[Sensor]:
    """``models.list_models``, from the sealed bank when there is one: its list of sensors
    with a model (written with the index, checked against a new listing before the seal)
    plus those of saves in flight then that have a manifest now. The same argument as for
    the entries (``seal``) makes it exact; without a sealed bank, models/ is listed."""
    index = _read_index(store)
    if index and index.get("sealed") is True:
        try:
            body = json.loads(store.get(MODELS_PATH))
        except (NotFound, ValueError):
            body = None
        if isinstance(body, dict) and body.get("rebuild") == index.get("rebuild"):
            out = set(sensor_columns(body["devices"], body["tags"]))
            for sensor in parse_sensors(index.get("check", [])):
                if store.exists(manifest_path(sensor)):
                    out.add(sensor)
            return out
    return list_models(store)


def models_list(nonce: str, sensors: Iterable[Sensor]) -> bytes:
    """``bank/models.json``: the sensors with a model, as two columns (fast to read back)."""
    sensors = list(sensors)
    return json.dumps({"rebuild": nonce, "devices": [s[0] for s in sensors],
                       "tags": [s[1] for s in sensors]}, separators=(",", ":")).encode()


def versions_list(nonce: str, sensors: Iterable[Sensor], versions: Mapping[str, str]) -> bytes:
    """``bank/versions.json``: each sensor's ``Device/Tag`` and its files' versions
    (``model_versions``) when the bank was built."""
    keys = [f"{s[0]}/{s[1]}" for s in sensors]
    return json.dumps({"rebuild": nonce, "sensors": keys,
                       "versions": [versions.get(k, "") for k in keys]},
                      separators=(",", ":")).encode()


def model_versions(store: Store) -> dict[str, str] | None:
    """Each ``Device/Tag``'s manifest and model file versions (size and ETag or modification
    time) from one listing of models/, None for a store that cannot list versions."""
    if not store.versioned_listing:
        return None
    out: dict[str, list[str]] = {}
    for path, size, version in store.list_info("models"):
        if path.endswith(".json"):
            key, slot = path[len("models/"):-len(".json")], 0
        elif path.endswith(".skops"):
            key, slot = path[len("models/"):-len(".skops")], 1
        else:
            continue
        pair = out.get(key)
        if pair is None:
            pair = out[key] = ["", ""]
        pair[slot] = f"{size}:{version}"
    return {key: "|".join(pair) for key, pair in out.items()}


def registry_damage(store: Store) -> dict[Sensor, str]:
    """Sensors whose model files changed outside fleetscore since the sealed bank was built
    and no longer load (a damaged, cut or deleted manifest or model file), and why. One
    listing of models/ against the versions the bank recorded; only changed sensors are read.
    The bank's compiled copy of such a sensor is intact, but the registry is not: the run
    says so and names the file instead of scoring on silently."""
    index = _read_index(store)
    if not index or index.get("sealed") is not True:
        return {}  # unsealed: every entry is checked against its manifest anyway
    try:
        body = json.loads(store.get(VERSIONS_PATH))
    except (NotFound, ValueError, RecursionError):
        return {}
    if not isinstance(body, dict) or body.get("rebuild") != index.get("rebuild") \
            or not isinstance(body.get("versions"), list):
        return {}
    current = model_versions(store)
    if current is None:
        return {}
    changed = [k for k, v in zip(body["sensors"], body["versions"], strict=False)
               if current.get(k) != v]
    return {s: why for s in map(Sensor.parse, changed)
            if (why := model_problem(store, s)) is not None}


def _read_index(store: Store) -> dict | None:
    """The bank's index, None when there is none or it is damaged (every sensor then takes
    the plain path, and `verify` names the file)."""
    try:
        body = json.loads(store.get(INDEX_PATH))
    except (NotFound, ValueError, RecursionError):
        return None
    if not isinstance(body, dict) or not isinstance(body.get("shards"), list) or not all(
            isinstance(s, dict) and {"path", "first", "last"} <= s.keys() for s in body["shards"]):
        return None
    return body


def load_bank(store: Store, sensors: Iterable[tuple[str, str]], *, ordered: bool = False
              ) -> Bank:
    """Compiled models of the given sensors (Sensors, or (device, tag) pairs; ``ordered``:
    already sorted, each once) found in the bank and still current (others are simply
    absent, and scored by scikit-learn), as packed arrays."""
    index = _read_index(store)
    if not index:
        return Bank.empty()
    wanted = list(sensors) if ordered else [(d, t) for d, t in sorted_unique(sensors)]
    wanted_keys = sensor_keys([d for d, _ in wanted], [t for _, t in wanted])
    parts = []
    sealed = index.get("sealed") is True
    hashes = not sealed or bool(index.get("check"))  # only entries not vouched for need them
    for shard in index["shards"]:
        first, last = Sensor.parse(shard["first"]), Sensor.parse(shard["last"])
        lo = bisect.bisect_left(wanted, (first.device, first.tag))
        hi = bisect.bisect_right(wanted, (last.device, last.tag))
        if lo == hi:
            continue
        try:
            parts.append(_load_shard(store, shard["path"], wanted_keys[lo:hi], hashes))
        except (NotFound, ValueError, KeyError, OSError, zipfile.BadZipFile):
            continue  # a damaged shard, or one of another format: its sensors take the plain path
    found = Bank.concat(parts)
    # An entry stands for the model it was compiled from, and only while the manifest still
    # names that model. A sealed index vouches for its entries but those of saves that were
    # in progress when it was sealed (``seal``); an unsealed one (being rebuilt, or written
    # by an older fleetscore) vouches for none. An entry not vouched for is checked against
    # its manifest, and a mismatch sends the sensor to scikit-learn with its current model.
    check = pa.array(index.get("check", []) if sealed else [], pa.string())
    svm = _current(store, found.ids, found.sha, check, sealed)
    forests = _current(store, found.forests.ids, found.forests.sha, check, sealed)
    return replace(found.select(svm), forests=found.forests.select(forests))


def _current(store: Store, ids: pa.Array, sha: np.ndarray, check: pa.Array, sealed: bool
             ) -> np.ndarray:
    """The entries (of ``ids``, compiled from ``sha``) still current: those a sealed index
    vouches for, and those whose manifest still names the hash they were compiled from."""
    if sealed:
        unsure = pc.is_in(ids, value_set=check).to_numpy(zero_copy_only=False)
    else:
        unsure = np.ones(len(ids), dtype=bool)
    keep = ~unsure
    at = np.flatnonzero(unsure)
    current = _manifest_shas(store, ids.take(pa.array(at, pa.int64())).to_pylist())
    keep[at] = [c == h for c, h in zip(current, sha[at].tolist(), strict=True)]
    return np.flatnonzero(keep)


def _manifest_shas(store: Store, keys: list[str]) -> list[str | None]:
    """The model hash each ``Device/Tag`` key's manifest names now (None: no usable one)."""
    out: list[str | None] = []
    for data in get_many(store, [f"models/{key}.json" for key in keys], missing_ok=True):
        try:
            sha = json.loads(data)["sha256"] if data is not None else None
        except (ValueError, KeyError, TypeError):
            sha = None
        out.append(sha if isinstance(sha, str) else None)
    return out


@dataclass(frozen=True, eq=False)
class Bank(Mapping):
    """Compiled models as packed arrays: entry i is sensor ``ids[i]`` (``Device/Tag``),
    compiled from the model bytes of hash ``sha[i]``, with parameters ``params[i]`` (named by
    PARAMS) and support vectors and dual coefficients ``offsets[i]:offsets[i + 1]``. A
    Mapping from Sensor to Compiled as well, for code that wants one model at a time.

    ``forests``: the compiled IsolationForests of the same shards, keyed the same way (a
    sensor is in one or the other). Entry numbers, ``select``, ``index`` and the Mapping are
    the SVMs'; ``only`` filters both."""

    ids: pa.Array
    sha: np.ndarray
    params: np.ndarray
    offsets: np.ndarray
    support: np.ndarray
    dual: np.ndarray
    forests: Forests = field(default_factory=Forests.empty)

    @classmethod
    def empty(cls) -> Bank:
        return cls(pa.array([], pa.string()), np.zeros(0, "U64"), np.zeros((0, len(PARAMS))),
                   np.zeros(1, np.int64), np.zeros(0), np.zeros(0))

    @classmethod
    def of(cls, entries: Iterable[tuple[Sensor, str, Compiled]]) -> Bank:
        entries = list(entries)
        if not entries:
            return cls.empty()
        counts = np.array([len(c.support) for _, _, c in entries], dtype=np.int64)
        return cls(
            pa.array([f"{s.device}/{s.tag}" for s, _, _ in entries], pa.string()),
            np.array([h for _, h, _ in entries], dtype="U64"),
            np.array([[float(getattr(c, name)) for name in PARAMS] for _, _, c in entries],
                     dtype=np.float64).reshape(-1, len(PARAMS)),
            np.concatenate(([0], np.cumsum(counts))),
            np.concatenate([np.asarray(c.support, np.float64) for _, _, c in entries]),
            np.concatenate([np.asarray(c.dual, np.float64) for _, _, c in entries]))

    @classmethod
    def decode(cls, data: bytes, *, sha: bool = True) -> Bank:
        """A shard's entries (``sha=False``: without their hashes, which a sealed index that
        vouches for every entry makes unneeded; an npz reads only the arrays asked for)."""
        with np.load(io.BytesIO(data), allow_pickle=False) as z:
            _check_format(z)
            return _decode_bank(z, sha)

    @classmethod
    def concat(cls, banks: list[Bank]) -> Bank:
        banks = [b for b in banks if len(b.ids) or len(b.forests)]
        if not banks:
            return cls.empty()
        if len(banks) == 1:
            return banks[0]
        forests = Forests.concat([b.forests for b in banks])
        shift = np.cumsum([0] + [len(b.support) for b in banks[:-1]])
        return cls(pa.concat_arrays([b.ids for b in banks]),
                   np.concatenate([b.sha for b in banks]),
                   np.concatenate([b.params for b in banks]),
                   np.concatenate([[0]] + [b.offsets[1:] + k for b, k in zip(banks, shift,
                                                                               strict=True)]),
                   np.concatenate([b.support for b in banks]),
                   np.concatenate([b.dual for b in banks]), forests)

    def only(self, keys: pa.Array) -> Bank:
        """The SVM and forest entries of these ``Device/Tag`` keys."""
        def chosen(ids: pa.Array) -> np.ndarray:
            return np.flatnonzero(pc.is_in(ids, value_set=keys).to_numpy(zero_copy_only=False))
        return replace(self.select(chosen(self.ids)),
                       forests=self.forests.select(chosen(self.forests.ids)))

    def select(self, entries: np.ndarray) -> Bank:
        """The given SVM entries, in that order (the forests as they are)."""
        entries = np.asarray(entries, dtype=np.int64)
        if len(entries) == len(self.ids) and (entries == np.arange(len(entries))).all():
            return self
        starts, stops = self.offsets[entries], self.offsets[entries + 1]
        lengths = stops - starts
        within = np.arange(lengths.sum()) - np.repeat(np.cumsum(lengths) - lengths, lengths)
        vectors = np.repeat(starts, lengths) + within
        return Bank(self.ids.take(pa.array(entries)), self.sha[entries], self.params[entries],
                    np.concatenate(([0], np.cumsum(lengths))), self.support[vectors],
                    self.dual[vectors], self.forests)

    def index(self, keys: pa.Array) -> np.ndarray:
        """Each ``Device/Tag`` key's entry, -1 for keys the bank does not hold."""
        return key_positions(self.ids, keys)

    @functools.cached_property
    def _position(self) -> dict[str, int]:
        return {key: i for i, key in enumerate(self.ids.to_pylist())}

    def __getitem__(self, sensor: Sensor) -> Compiled:
        i = self._position.get(f"{sensor[0]}/{sensor[1]}")
        if i is None:
            raise KeyError(sensor)
        p = dict(zip(PARAMS, self.params[i].tolist(), strict=True))
        a, b = self.offsets[i], self.offsets[i + 1]
        return Compiled(**{**p, "kernel": int(p["kernel"])}, support=self.support[a:b],
                        dual=self.dual[a:b])

    def __iter__(self):
        # Ids were validated when the models were saved; the bank is fleetscore's own file.
        return (Sensor.unchecked(*key.split("/", 1)) for key in self.ids.to_pylist())

    def __len__(self) -> int:
        return len(self.ids)


def _decode_bank(z, sha: bool) -> Bank:
    """An open npz shard's SVM and forest entries (its format checked by the caller)."""
    return replace(_decode_svms(z, sha), forests=_decode_forests(z, sha))


def _decode_svms(z, sha: bool) -> Bank:
    """A shard's SVM entries (its forests left out)."""
    device, tag = z["device"], z["tag"]
    hashes = z["sha256"] if sha else np.zeros(len(device), "U1")
    return Bank(sensor_keys(device, tag), hashes, z["params"].reshape(-1, len(PARAMS)),
                z["offsets"].astype(np.int64), z["support"], z["dual"])


def _load_shard(store: Store, path: str, keys: pa.Array, sha: bool) -> Bank:
    """A shard's entries of these ``Device/Tag`` keys. A forest is tens of kilobytes, a
    shard's forests tens of megabytes, and a unit wants a few hundred of them: on a local
    store (reads are system calls) only the byte ranges of the wanted forests' cuts and
    decisions are read. Elsewhere the whole shard, in one request, as before."""
    if not store.local:
        return Bank.decode(store.get(path), sha=sha).only(keys)
    with store.open(path) as f, np.load(f, allow_pickle=False) as z:
        _check_format(z)
        svms = _decode_svms(z, sha)
        forests = _read_forests(f, z, keys, sha)
    return replace(svms.only(keys), forests=forests)


RUN_GAP = 16  # entries not wanted between two wanted ones read through rather than skipped


def _read_forests(f, z, keys: pa.Array, sha: bool) -> Forests:
    """The shard's forests of these keys, reading from the file ``f`` (the npz ``z``) only
    the cuts and decisions of runs of wanted entries."""
    if "forest_device" not in z.files:
        return Forests.empty()
    ids = sensor_keys(z["forest_device"], z["forest_tag"])
    chosen = np.flatnonzero(pc.is_in(ids, value_set=keys).to_numpy(zero_copy_only=False))
    if not len(chosen):
        return Forests.empty()
    hashes = z["forest_sha256"] if sha else np.zeros(len(ids), "U1")
    offsets = z["forest_offsets"].astype(np.int64)
    cuts, decisions = _Member(f, z, "forest_cuts"), _Member(f, z, "forest_decisions")
    near = _decode_near(z)  # a few numbers a forest: read whole
    parts = []
    for run in np.split(chosen, np.flatnonzero(np.diff(chosen) > RUN_GAP) + 1):
        a, b = int(run[0]), int(run[-1]) + 1
        # Entry i's decisions start at offsets[i] + i (one more decision than cuts each).
        span = Forests(ids[a:b], hashes[a:b], offsets[a : b + 1] - offsets[a],
                       cuts.read(offsets[a], offsets[b]),
                       decisions.read(offsets[a] + a, offsets[b] + b),
                       near.select(np.arange(a, b)) if near is not None else None)
        parts.append(span.select(run - a))
    return Forests.concat(parts)


class _Member:
    """A one-dimensional array stored uncompressed in an npz (``np.savez`` stores, never
    deflates): where its values start in the file, to read any range of them."""

    def __init__(self, f, z, name: str) -> None:
        info = z.zip.getinfo(f"{name}.npy")
        if info.compress_type != zipfile.ZIP_STORED:
            raise ValueError(f"a bank shard whose {name} is compressed")
        f.seek(info.header_offset)
        local = f.read(30)  # the zip local file header: its name and extra field follow
        if len(local) != 30 or local[:4] != b"PK\x03\x04":
            raise ValueError("a damaged bank shard")
        name_length, extra_length = struct.unpack("<HH", local[26:30])
        f.seek(info.header_offset + 30 + name_length + extra_length)
        version = np.lib.format.read_magic(f)
        read_header = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                       else np.lib.format.read_array_header_2_0)
        shape, fortran, dtype = read_header(f)
        if len(shape) != 1 or dtype.hasobject or fortran:
            raise ValueError(f"a bank shard whose {name} is not a flat array")
        self.f, self.start, self.dtype, self.size = f, f.tell(), dtype, shape[0]

    def read(self, first: int, stop: int) -> np.ndarray:
        if not 0 <= first <= stop <= self.size:
            raise ValueError("a damaged bank shard")
        self.f.seek(self.start + first * self.dtype.itemsize)
        data = self.f.read((stop - first) * self.dtype.itemsize)
        if len(data) != (stop - first) * self.dtype.itemsize:
            raise ValueError("a damaged bank shard")
        return np.frombuffer(data, dtype=self.dtype)


def _decode_forests(z, sha: bool) -> Forests:
    """A shard's compiled forests (none in a format 2 shard, which compiled none)."""
    if "forest_device" not in z.files:
        return Forests.empty()
    device, tag = z["forest_device"], z["forest_tag"]
    hashes = z["forest_sha256"] if sha else np.zeros(len(device), "U1")
    return Forests(sensor_keys(device, tag), hashes, z["forest_offsets"].astype(np.int64),
                   z["forest_cuts"], z["forest_decisions"], _decode_near(z))


# --- vectorized decision --------------------------------------------------------------------


def decisions_with_magnitude(models: list[Compiled], values: list[np.ndarray]
                             ) -> list[tuple[np.ndarray, np.ndarray]]:
    """Decisions and the summed magnitude of their terms (sum |dual * K| + |intercept|), which
    bounds how far two float computations of the same decision can drift apart: model i on
    ``values[i]``."""
    bank = Bank.of((Sensor.unchecked("m", str(i)), "", m) for i, m in enumerate(models))
    lengths = np.array([len(v) for v in values], dtype=np.int64)
    stops = np.cumsum(lengths)
    flat = np.concatenate(values).astype(np.float64) if len(values) else np.zeros(0)
    dec, mag = decide(bank, np.arange(len(models)), stops - lengths, stops, flat)
    return [(dec[b - n:b], mag[b - n:b]) for n, b in zip(lengths, stops, strict=True)]


def decide(bank: Bank, entries: np.ndarray, starts: np.ndarray, stops: np.ndarray,
           values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Decisions and magnitudes for rows of ``values``: rows ``starts[i]:stops[i]`` are scored
    by the bank's entry ``entries[i]``. Rows no run covers are NaN. All runs at once: a few
    array operations per block of runs of one kernel, sized to stay in cache."""
    dec = np.full(len(values), np.nan)
    mag = np.full(len(values), np.nan)
    if not len(entries):
        return dec, mag
    entries = np.asarray(entries, dtype=np.int64)
    starts = np.asarray(starts, dtype=np.int64)
    lengths = np.asarray(stops, dtype=np.int64) - starts
    counts = bank.offsets[entries + 1] - bank.offsets[entries]
    kernels = bank.params[entries, PARAMS.index("kernel")].astype(np.int64)
    order = np.lexsort((lengths, counts, kernels))
    cost = np.maximum(counts, 1) * np.maximum(lengths, 1)
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):  # such points go to scikit-learn
        start = 0
        while start < len(order):
            kernel = kernels[order[start]]
            # A block: runs of one kernel, padded to its widest run, about BLOCK elements.
            stop = min(len(order), start + max(1, BLOCK_ELEMENTS // int(cost[order[start]])))
            # Padded to the longest run and the most vectors in it, which may be two runs.
            while stop - start > 1 and (int(lengths[order[start:stop]].max())
                                        * int(np.maximum(counts[order[start:stop]], 1).max())
                                        * (stop - start) > 2 * BLOCK_ELEMENTS):
                stop = start + (stop - start) // 2
            same = kernels[order[start:stop]] == kernel
            if not same.all():
                stop = start + int(np.argmin(same))
            block = order[start:stop]
            _decide_block(bank, entries[block], starts[block], lengths[block], int(kernel),
                          values, dec, mag)
            start = stop
    return dec, mag


BLOCK_ELEMENTS = 1 << 18  # kernel values per block (2 MiB of float64: an L2 cache here)


def _decide_block(bank: Bank, entries: np.ndarray, starts: np.ndarray, lengths: np.ndarray,
                  kernel: int, values: np.ndarray, out_dec: np.ndarray,
                  out_mag: np.ndarray) -> None:
    taken = bank.params[entries]
    p = {name: taken[:, k : k + 1] for k, name in enumerate(PARAMS)}
    width = int(lengths.max())
    points = np.arange(width)
    at = starts[:, None] + np.minimum(points, lengths[:, None] - 1)  # padding repeats a point
    # The scalers' steps in scikit-learn's order, elementwise: bit for bit its scaled values.
    x = values[at] - p["mean"]
    x /= p["scale"]
    x *= p["mul"]
    x += p["add"]
    np.clip(x, p["low"], p["high"], out=x)
    counts = bank.offsets[entries + 1] - bank.offsets[entries]
    vectors = np.arange(max(1, int(counts.max())))
    inside = vectors < counts[:, None]
    sv_at = bank.offsets[entries][:, None] + np.minimum(vectors, np.maximum(counts, 1)[:, None] - 1)
    sv_at = np.minimum(sv_at, max(0, len(bank.support) - 1))  # a model of no vectors: padding
    sv = bank.support[sv_at] if len(bank.support) else np.zeros(sv_at.shape)
    dual = np.where(inside, bank.dual[sv_at] if len(bank.dual) else 0.0, 0.0)  # padding adds 0
    gamma, intercept = p["gamma"], p["intercept"]
    if kernel == KERNELS["rbf"] and (dual >= 0).all():
        dec, magnitude = _rbf_factored(x, sv, dual, gamma, intercept)
        bad = ~(np.isfinite(dec) & np.isfinite(magnitude))
        if bad.any():  # a factor overflowed: those points the direct way
            rows = np.flatnonzero(bad.any(axis=1))
            d2, m2 = _kernel_terms(kernel, x[rows], sv[rows], dual[rows], gamma[rows],
                                   p["coef0"][rows], p["degree"][rows], intercept[rows])
            dec[rows], magnitude[rows] = d2, m2
    else:
        dec, magnitude = _kernel_terms(kernel, x, sv, dual, gamma, p["coef0"], p["degree"],
                                       intercept)
    real = points < lengths[:, None]
    out_dec[at[real]] = dec[real]
    out_mag[at[real]] = magnitude[real]


def _rbf_factored(x, sv, dual, gamma, intercept):
    """exp(-g (x - s)^2) = exp(-g x^2) * exp(2 g x s) * exp(-g s^2): one exponential of an
    outer product per term instead of a difference, a square, a product and an exponential
    (each term's relative error stays near 1e-13, far inside the boundary tolerance; an
    overflowing factor is caught by the caller). Dual coefficients are non-negative, so every
    term is, and the magnitude is the terms' sum plus |intercept|."""
    k = (2.0 * gamma * x)[:, :, None] * sv[:, None, :]
    np.exp(k, out=k)
    weights = dual * np.exp(-gamma * sv * sv)
    total = np.exp(-gamma * x * x) * np.matmul(k, weights[:, :, None])[:, :, 0]
    return total + intercept, total + np.abs(intercept)


def _kernel_terms(kernel, x, sv, dual, gamma, coef0, degree, intercept):
    """libsvm's kernel, term by term (its own formula for the RBF)."""
    g = gamma[:, :, None]
    if kernel == KERNELS["rbf"]:
        k = x[:, :, None] - sv[:, None, :]
        np.square(k, out=k)
        np.multiply(k, -g, out=k)
        np.exp(k, out=k)
    else:
        k = x[:, :, None] * sv[:, None, :]
        if kernel == KERNELS["poly"]:
            k = (g * k + coef0[:, :, None]) ** degree[:, :, None]
        elif kernel == KERNELS["sigmoid"]:
            k = np.tanh(g * k + coef0[:, :, None])
    total = np.matmul(k, dual[:, :, None])[:, :, 0]
    if kernel == KERNELS["rbf"] and (dual >= 0).all():
        return total + intercept, total + np.abs(intercept)
    np.abs(k, out=k)
    return total + intercept, np.matmul(k, np.abs(dual)[:, :, None])[:, :, 0] + np.abs(intercept)


def near_boundary(decision: np.ndarray, magnitude: np.ndarray) -> np.ndarray:
    """Points whose sign two correct float computations might disagree on: |decision| below
    BOUNDARY_TOLERANCE times the magnitude of its terms (at least 1), or not finite (an
    overflowing kernel: no bound holds there)."""
    with np.errstate(invalid="ignore"):
        close = np.abs(decision) < BOUNDARY_TOLERANCE * np.maximum(magnitude, 1.0)
    return close | ~np.isfinite(decision) | ~np.isfinite(magnitude)


# Rounding a compiler may add to libsvm's loop (a fused multiply-add a term, on a platform that
# contracts) is at most one unit in the last place of the running sum a step: a result further
# from 0 than this many steps' worth keeps its sign whichever way libsvm was compiled.
_EPS = float(np.finfo(np.float64).eps)


def libsvm_decisions(bank: Bank, entry: int, values: np.ndarray
                     ) -> tuple[np.ndarray, np.ndarray]:
    """libsvm's own decisions for a few points of one RBF entry, and where they are settled.

    libsvm (scikit-learn's copy, svm.cpp ``predict_values`` and ``Kernel::k_function``) takes
    d = x - s, exp(-gamma * (d * d)) a support vector, sums dual * kernel in the vectors' order,
    then subtracts rho (the intercept's negation); this does the same in the same order with the
    same exp (the C library's, through ``math.exp``), after the scaler's steps as ``decide``
    takes them, so its decision is libsvm's bit for bit. No import of scikit-learn or skops:
    the points ``decide`` cannot vouch for are settled here. ``settled`` is False for points
    within the rounding another compilation of libsvm could add, and for every point of a
    kernel other than the RBF: those stay with scikit-learn."""
    p = dict(zip(PARAMS, bank.params[entry].tolist(), strict=True))
    decision = np.full(len(values), np.nan)
    if int(p["kernel"]) != KERNELS["rbf"]:
        return decision, np.zeros(len(values), dtype=bool)
    with np.errstate(all="ignore"):
        x = np.asarray(values, dtype=np.float64) - p["mean"]
        x /= p["scale"]
        x *= p["mul"]
        x += p["add"]
        np.clip(x, p["low"], p["high"], out=x)
    a, b = bank.offsets[entry], bank.offsets[entry + 1]
    pairs = list(zip(bank.dual[a:b].tolist(), bank.support[a:b].tolist(), strict=True))
    gamma, intercept = p["gamma"], p["intercept"]
    magnitude = np.zeros(len(values))
    for i, point in enumerate(x.tolist()):
        total = size = 0.0
        try:
            for dual, vector in pairs:
                d = point - vector
                term = dual * math.exp(-gamma * (d * d))
                total += term
                size += abs(term)
        except OverflowError:  # a negative gamma scikit-learn would not fit: its own to decide
            total = math.nan
        decision[i] = total + intercept
        magnitude[i] = size + abs(intercept)
    bound = 2.0 * (len(pairs) + 2) * _EPS * magnitude
    with np.errstate(invalid="ignore"):
        settled = np.isfinite(decision) & (np.abs(decision) > bound)
    return decision, settled
