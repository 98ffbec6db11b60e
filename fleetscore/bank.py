"""The model bank: per-sensor ``Pipeline(StandardScaler, OneClassSVM)`` models compiled into
packed arrays, and the vectorized scoring of many sensors at once.

A one-feature one-class SVM is a handful of numbers: the scaler's mean and scale, the support
vectors, their dual coefficients, the intercept and the kernel's parameters. Scoring a unit's
sensors is then a few array operations over all of them (padded to the chunk's largest point
and support-vector counts), instead of one scikit-learn call per sensor.

The bank is a derived, safe artifact: ``.npz`` shards read with ``allow_pickle=False``, each
entry recording the sha256 of the model it was compiled from. ``bank/index.json`` lists
the shards; writing any model deletes it, so a bank never outlives a model change, and
``rebuild_bank`` (run at the end of ``train`` and ``models import``) recompiles only the shards
whose models changed (shards are named by their models' hashes). Sensors missing from the
bank, and estimators it cannot compile, are scored by scikit-learn in the same unit. A model
file altered behind fleetscore's back (not re-imported) keeps being scored from what was
compiled from its verified bytes; ``fleetscore verify`` reports such a file.

Labels are identical to scikit-learn's: libsvm predicts +1 only for a decision > 0, and points
whose decision is within ``BOUNDARY_TOLERANCE`` of 0, where the two float computations could
disagree, are re-scored by scikit-learn itself.
"""

from __future__ import annotations

import bisect
import hashlib
import io
import json
import zipfile
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

from .errors import NotFound
from .models import list_models, load_model, read_manifest
from .sensors import Sensor
from .stores import Store

BANK_FOLDER = "bank"  # beside models/, never inside: a device could be called "bank"
INDEX_PATH = f"{BANK_FOLDER}/index.json"
SHARD_SENSORS = 1024  # a unit decodes only the shards holding its sensors
BOUNDARY_TOLERANCE = 1e-9
KERNELS = {"rbf": 0, "linear": 1, "poly": 2, "sigmoid": 3}
CHUNK_SENSORS = 64  # sensors per vectorized batch: padded work stays in cache


@dataclass(frozen=True)
class Compiled:
    kernel: int
    mean: float
    scale: float
    gamma: float
    coef0: float
    degree: float
    intercept: float
    support: np.ndarray  # scaled support vectors, float64
    dual: np.ndarray  # dual coefficients, float64


def compile_model(estimator) -> Compiled | None:
    """Packed parameters of a one-feature [StandardScaler ->] OneClassSVM; None otherwise."""
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import StandardScaler
    from sklearn.svm import OneClassSVM

    scaler = None
    svm = estimator
    if isinstance(estimator, Pipeline):
        steps = [step for _, step in estimator.steps if step not in (None, "passthrough")]
        if len(steps) == 2 and type(steps[0]) is StandardScaler:
            scaler, svm = steps
        elif len(steps) == 1:
            svm = steps[0]
        else:
            return None
    if type(svm) is not OneClassSVM or svm.kernel not in KERNELS:
        return None
    if svm.support_vectors_.shape[1] != 1 or getattr(svm, "n_features_in_", 1) != 1:
        return None
    mean = float(scaler.mean_[0]) if scaler is not None and scaler.mean_ is not None else 0.0
    scale = float(scaler.scale_[0]) if scaler is not None and scaler.scale_ is not None else 1.0
    return Compiled(
        kernel=KERNELS[svm.kernel], mean=mean, scale=scale, gamma=float(svm._gamma),
        coef0=float(svm.coef0), degree=float(svm.degree), intercept=float(svm.intercept_[0]),
        support=np.ascontiguousarray(svm.support_vectors_[:, 0], dtype=np.float64),
        dual=np.ascontiguousarray(svm.dual_coef_[0], dtype=np.float64),
    )


# --- shards ---------------------------------------------------------------------------------


def encode_shard(entries: list[tuple[Sensor, str, Compiled]]) -> bytes:
    counts = np.array([len(c.support) for _, _, c in entries], dtype=np.int64)
    arrays = {
        "device": np.array([s.device for s, _, _ in entries], dtype="U64"),
        "tag": np.array([s.tag for s, _, _ in entries], dtype="U64"),
        "sha256": np.array([h for _, h, _ in entries], dtype="U64"),
        "params": np.array([[c.kernel, c.mean, c.scale, c.gamma, c.coef0, c.degree, c.intercept]
                            for _, _, c in entries], dtype=np.float64).reshape(-1, 7),
        "offsets": np.concatenate(([0], np.cumsum(counts))),
        "support": np.concatenate([c.support for _, _, c in entries]) if entries else np.zeros(0),
        "dual": np.concatenate([c.dual for _, _, c in entries]) if entries else np.zeros(0),
    }
    sink = io.BytesIO()
    np.savez(sink, **arrays)
    return sink.getvalue()


def decode_shard(data: bytes, wanted: Iterable[Sensor] | None = None
                 ) -> dict[Sensor, tuple[str, Compiled]]:
    """A shard's entries (only the ``wanted`` ones, when given)."""
    with np.load(io.BytesIO(data), allow_pickle=False) as z:
        device, tag, sha, params = z["device"], z["tag"], z["sha256"], z["params"]
        offsets, support, dual = z["offsets"], z["support"], z["dual"]
    position = {(d, t): i for i, (d, t) in enumerate(zip(device.tolist(), tag.tolist(), strict=True))}
    keys = position if wanted is None else [(s.device, s.tag) for s in wanted]
    out = {}
    for key in keys:
        i = position.get(key)
        if i is None:
            continue
        k, mean, scale, gamma, coef0, degree, intercept = params[i].tolist()
        a, b = offsets[i], offsets[i + 1]
        # Ids were validated when the models were saved; the bank is fleetscore's own file.
        out[Sensor.unchecked(*key)] = (str(sha[i]), Compiled(
            int(k), mean, scale, gamma, coef0, degree, intercept, support[a:b], dual[a:b]))
    return out


def invalidate(store: Store) -> None:
    """Called on every model write: the bank must never stand for a model that changed."""
    store.delete(INDEX_PATH)


@dataclass(frozen=True)
class BankStats:
    sensors: int
    compiled: int
    shards_written: int
    shards_kept: int


def rebuild_bank(store: Store, *, shard_sensors: int = SHARD_SENSORS) -> BankStats:
    sensors = sorted(list_models(store))
    manifests = {s: read_manifest(store, s) for s in sensors}
    existing = set(store.list(BANK_FOLDER))
    shards, written, kept, compiled = [], 0, 0, 0
    for start in range(0, len(sensors), shard_sensors):
        group = sensors[start : start + shard_sensors]
        key = hashlib.sha256("\n".join(f"{s}:{manifests[s].sha256}" for s in group).encode()).hexdigest()
        path = f"{BANK_FOLDER}/shard-{key[:24]}.npz"
        if path in existing:
            # Named by its models' hashes: an existing shard is still exactly right.
            try:
                count = len(decode_shard(store.get(path)))
            except (ValueError, KeyError, OSError, zipfile.BadZipFile):
                count = None
            if count is not None:
                shards.append({"key": key, "path": path, "first": str(group[0]),
                               "last": str(group[-1]), "compiled": count})
                kept += 1
                compiled += count
                continue
        entries = []
        for sensor in group:
            try:
                c = compile_model(load_model(store, sensor))
            except Exception:  # noqa: BLE001 - an unloadable model is scored (and failed) the plain way
                c = None
            if c is not None:
                entries.append((sensor, manifests[sensor].sha256, c))
        store.put(path, encode_shard(entries))
        shards.append({"key": key, "path": path, "first": str(group[0]), "last": str(group[-1]),
                       "compiled": len(entries)})
        written += 1
        compiled += len(entries)
    live = {s["path"] for s in shards}
    for path in store.list(BANK_FOLDER):
        if path.endswith(".npz") and path not in live:
            store.delete(path)
    store.put(INDEX_PATH, json.dumps({"shards": shards}, indent=1).encode())
    return BankStats(len(sensors), compiled, written, kept)


def _read_index(store: Store) -> dict | None:
    try:
        return json.loads(store.get(INDEX_PATH))
    except (NotFound, ValueError):
        return None


def load_bank(store: Store, sensors: Iterable[Sensor]) -> dict[Sensor, Compiled]:
    """Compiled models of the given sensors found in the bank (others are simply absent)."""
    index = _read_index(store)
    if not index:
        return {}
    wanted = sorted({(s.device, s.tag) for s in sensors})
    out: dict[Sensor, Compiled] = {}
    for shard in index["shards"]:
        first, last = Sensor.parse(shard["first"]), Sensor.parse(shard["last"])
        lo = bisect.bisect_left(wanted, (first.device, first.tag))
        hi = bisect.bisect_right(wanted, (last.device, last.tag))
        if lo == hi:
            continue
        members = [Sensor.unchecked(d, t) for d, t in wanted[lo:hi]]
        try:
            entries = decode_shard(store.get(shard["path"]), members)
        except (NotFound, ValueError, KeyError, OSError, zipfile.BadZipFile):
            continue  # a damaged shard: its sensors take the plain path
        out.update({s: entry[1] for s, entry in entries.items()})
    return out


# --- vectorized decision --------------------------------------------------------------------


def decisions_with_magnitude(models: list[Compiled], values: list[np.ndarray]
                             ) -> list[tuple[np.ndarray, np.ndarray]]:
    """Decisions and the summed magnitude of their terms (sum |dual * K| + |intercept|), which
    bounds how far two float computations of the same decision can drift apart."""
    out: list = [None] * len(models)
    order = sorted(range(len(models)), key=lambda i: (models[i].kernel, len(models[i].support)))
    for start in range(0, len(order), CHUNK_SENSORS):
        chunk = order[start : start + CHUNK_SENSORS]
        kernels = {models[i].kernel for i in chunk}
        if len(kernels) > 1:  # keep each batch to one kernel
            for kernel in kernels:
                part = [i for i in chunk if models[i].kernel == kernel]
                for i, dec in zip(part, _batch([models[i] for i in part], [values[i] for i in part]),
                                  strict=True):
                    out[i] = dec
            continue
        for i, dec in zip(chunk, _batch([models[i] for i in chunk], [values[i] for i in chunk]),
                          strict=True):
            out[i] = dec
    return out


def _batch(models: list[Compiled], values: list[np.ndarray]) -> list[tuple[np.ndarray, np.ndarray]]:
    n = len(models)
    p = max(len(v) for v in values)
    v = max(len(m.support) for m in models)
    x = np.zeros((n, p))
    sv = np.zeros((n, v))
    dual = np.zeros((n, v))  # padding: dual 0 contributes nothing
    for i, (m, vals) in enumerate(zip(models, values, strict=True)):
        x[i, : len(vals)] = (vals - m.mean) / m.scale
        sv[i, : len(m.support)] = m.support
        dual[i, : len(m.dual)] = m.dual
    gamma = np.array([m.gamma for m in models])[:, None, None]
    kernel = models[0].kernel
    if kernel == KERNELS["rbf"]:
        k = x[:, :, None] - sv[:, None, :]
        np.square(k, out=k)
        np.multiply(k, -gamma, out=k)
        np.exp(k, out=k)
    else:
        k = x[:, :, None] * sv[:, None, :]
        if kernel == KERNELS["poly"]:
            coef0 = np.array([m.coef0 for m in models])[:, None, None]
            degree = np.array([m.degree for m in models])[:, None, None]
            k = (gamma * k + coef0) ** degree
        elif kernel == KERNELS["sigmoid"]:
            coef0 = np.array([m.coef0 for m in models])[:, None, None]
            k = np.tanh(gamma * k + coef0)
    intercept = np.array([m.intercept for m in models])[:, None]
    dec = np.einsum("npv,nv->np", k, dual) + intercept
    np.abs(k, out=k)
    magnitude = np.einsum("npv,nv->np", k, np.abs(dual)) + np.abs(intercept)
    return [(dec[i, : len(vals)], magnitude[i, : len(vals)]) for i, vals in enumerate(values)]


def near_boundary(decision: np.ndarray, magnitude: np.ndarray) -> np.ndarray:
    """Points whose sign two correct float computations might disagree on: |decision| below
    BOUNDARY_TOLERANCE times the magnitude of its terms (at least 1)."""
    return np.abs(decision) < BOUNDARY_TOLERANCE * np.maximum(magnitude, 1.0)
