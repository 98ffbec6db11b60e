import hashlib

import joblib
import numpy as np
import pytest
import skops.io as sio
from sklearn.ensemble import IsolationForest
from sklearn.preprocessing import StandardScaler

from fleetscore.core.sensors import Sensor
from fleetscore.errors import InvalidIdError, ModelError, UntrustedModelError
from fleetscore.model.imports import import_models, sensor_from_filename
from fleetscore.model.registry import (
    list_models,
    load_model,
    loads_model,
    model_path,
    read_manifest,
    save_model,
)
from fleetscore.model.training import reference_model


class Sneaky:
    """Not a scikit-learn type: a skops file holding it must be refused."""

    def predict(self, x):
        return np.ones(len(x))


def _fit(seed=0, features=1):
    return reference_model().fit(np.random.default_rng(seed).normal(size=(50, features)))


def test_save_load_roundtrip_with_manifest(store):
    sensor = Sensor("1", "4")
    model = _fit()
    m1 = save_model(store, sensor, model, source="test")
    m2 = save_model(store, sensor, model, source="test")
    assert (m1.version, m2.version) == (1, 2)
    manifest = read_manifest(store, sensor)
    assert manifest.sha256 == hashlib.sha256(store.get(model_path(sensor))).hexdigest()
    assert manifest.format == "skops" and manifest.estimator == "Pipeline(StandardScaler, OneClassSVM)"
    x = np.linspace(-3, 3, 20).reshape(-1, 1)
    assert (load_model(store, sensor).predict(x) == model.predict(x)).all()
    assert list_models(store) == {sensor}


@pytest.mark.reliability("R12")
def test_a_changed_model_file_is_detected_by_its_hash(local_store):
    sensor = Sensor("1", "4")
    save_model(local_store, sensor, _fit(0), source="test")
    local_store.put(model_path(sensor), sio.dumps(_fit(1)))
    with pytest.raises(ModelError, match="does not match its manifest"):
        load_model(local_store, sensor)


@pytest.mark.reliability("R11")
def test_skops_with_foreign_types_is_refused():
    with pytest.raises(UntrustedModelError, match="Sneaky"):
        loads_model(sio.dumps(Sneaky()), "x.skops")


def test_filename_parsing_with_underscores():
    assert sensor_from_filename("1_4") == Sensor("1", "4")
    assert sensor_from_filename("model_1_4") == Sensor("1", "4")
    known = {Sensor("dev_a", "t")}
    assert sensor_from_filename("dev_a_t", known) == Sensor("dev_a", "t")
    with pytest.raises(InvalidIdError, match="ambiguous"):
        sensor_from_filename("dev_a_t")
    with pytest.raises(InvalidIdError):
        sensor_from_filename("nounderscore")


@pytest.mark.reliability("R10")
def test_import_skops_refuses_pickles_and_names_every_bad_file(local_store, tmp_path):
    d = tmp_path / "models"
    d.mkdir()
    sio.dump(_fit(0), d / "1_1.skops")
    sio.dump(_fit(1), d / "model_1_2.skops")
    joblib.dump(_fit(2), d / "1_3.pkl")
    (d / "1_5.skops").write_bytes(b"not a zip at all")
    sio.dump(StandardScaler().fit(np.ones((3, 1))), d / "1_6.skops")
    sio.dump(_fit(3, features=2), d / "1_7.skops")
    sio.dump(Sneaky(), d / "1_8.skops")
    sio.dump(_fit(4), d / "bad name.skops")
    result = import_models(local_store, d)
    assert sorted(str(m.sensor) for m in result.imported) == ["1/1", "1/2"]
    refused = {p.file: p.reason for p in result.refused}
    failed = {p.file: p.reason for p in result.failed}
    assert "--trust-pickle" in refused["1_3.pkl"]
    assert "Sneaky" in refused["1_8.skops"]
    assert "not a readable skops file" in failed["1_5.skops"]
    assert "no predict()" in failed["1_6.skops"]
    assert "expects 2 features" in failed["1_7.skops"]
    assert "bad name.skops" in failed
    assert list_models(local_store) == {Sensor("1", "1"), Sensor("1", "2")}


def test_trusted_pickles_are_converted_to_skops(local_store, tmp_path):
    d = tmp_path / "models"
    d.mkdir()
    model = IsolationForest(random_state=0).fit(np.random.default_rng(0).normal(size=(100, 1)))
    joblib.dump(model, d / "model_7_9.joblib")
    result = import_models(local_store, d, trust_pickle=True)
    assert [str(m.sensor) for m in result.imported] == ["7/9"]
    assert local_store.get(model_path(Sensor("7", "9")))[:2] == b"PK"  # a skops zip, not a pickle
    x = np.linspace(-5, 5, 30).reshape(-1, 1)
    assert (load_model(local_store, Sensor("7", "9")).predict(x) == model.predict(x)).all()


def test_the_stores_sensors_are_read_only_when_a_name_is_ambiguous(local_store, tmp_path):
    calls = []

    def known():
        calls.append(1)
        return {Sensor("dev_a", "t")}

    d = tmp_path / "models"
    d.mkdir()
    sio.dump(_fit(0), d / "1_1.skops")
    import_models(local_store, d, known=known)
    assert calls == []
    sio.dump(_fit(1), d / "dev_a_t.skops")
    sio.dump(_fit(2), d / "model_dev_a_t.skops")
    result = import_models(local_store, d, known=known)
    assert calls == [1]  # read once for both ambiguous names
    assert sorted(str(m.sensor) for m in result.imported) == ["1/1", "dev_a/t", "dev_a/t"]


# --- the exact type list (issue: a crafted skops file ran code) -----------------------------


def crafted_skops(payload_file) -> bytes:
    """A skops file whose only node names numpy.testing.runstring: skops builds a TupleNode's
    type with the tuple as arguments, so loading it would exec the string."""
    import io
    import json
    import zipfile

    code = f"open({str(payload_file)!r}, 'w').write('ran')"

    def text(value):
        return {"__class__": "str", "__module__": "builtins", "__loader__": "JsonNode",
                "content": json.dumps(value), "__id__": id(value)}

    schema = {"__class__": "runstring", "__module__": "numpy.testing", "__loader__": "TupleNode",
              "content": [text(code), {"__class__": "dict", "__module__": "builtins",
                                       "__loader__": "JsonNode", "content": "{}", "__id__": 7}],
              "__id__": 1, "protocol": sio._protocol.PROTOCOL, "_skops_version": "0.16.0"}
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("schema.json", json.dumps(schema))
    return buffer.getvalue()


@pytest.mark.reliability("R11")
def test_a_crafted_skops_file_naming_a_numpy_function_runs_nothing(tmp_path):
    payload = tmp_path / "ran"
    with pytest.raises(UntrustedModelError, match="numpy.testing.runstring"):
        loads_model(crafted_skops(payload), "evil.skops")
    assert not payload.exists()


@pytest.mark.reliability("R11")
def test_models_import_refuses_a_crafted_file_with_exit_2(cli, tmp_path):
    payload = tmp_path / "ran"
    folder = tmp_path / "models"
    folder.mkdir()
    (folder / "1_4.skops").write_bytes(crafted_skops(payload))
    code, out, err = cli("models", "import", str(folder), "--store", str(tmp_path / "s"))
    assert code == 2, (out, err)
    assert "1_4.skops" in out + err and "numpy.testing.runstring" in out + err
    assert "Traceback" not in out + err and not payload.exists()


@pytest.mark.reliability("R11")
def test_a_crafted_model_in_the_store_fails_its_sensor_alone(trained_store, cli, tmp_path):
    """Written straight into models/ (anyone who can write the container): the run refuses
    it for that sensor, scores the others, and nothing runs."""
    import json as _json

    payload = tmp_path / "ran"
    sensor = Sensor("1", "1")
    data = crafted_skops(payload)
    trained_store.put(model_path(sensor), data)
    manifest = _json.loads(trained_store.get(f"models/{sensor.path}.json"))
    manifest["sha256"] = hashlib.sha256(data).hexdigest()
    trained_store.put(f"models/{sensor.path}.json", _json.dumps(manifest).encode())
    code, out, err = cli("run", "--window", "2024-03-01T01", "--store", str(trained_store.root),
                         "--backend", "sequential", "--json")
    assert code == 3, (out, err)
    body = _json.loads(out)["runs"][0]
    assert [f["sensor"] for f in body["failures"]] == ["1/1"]
    assert "numpy.testing.runstring" in body["failures"][0]["message"]
    assert body["scored"] == 2 and not payload.exists()


def test_the_trusted_list_is_exactly_what_the_accepted_estimators_are_made_of():
    from sklearn.covariance import EllipticEnvelope
    from sklearn.linear_model import SGDOneClassSVM
    from sklearn.neighbors import LocalOutlierFactor
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import MaxAbsScaler, MinMaxScaler, RobustScaler
    from sklearn.svm import OneClassSVM

    from fleetscore.model.registry import TRUSTED_NODES, skops_nodes

    rng = np.random.default_rng(0)
    found = set()
    for x in (rng.normal(size=(100, 1)), rng.normal(size=(100, 1)).astype(np.float32)):
        for detector in (OneClassSVM(), IsolationForest(n_estimators=5, random_state=0),
                         LocalOutlierFactor(novelty=True), EllipticEnvelope(), SGDOneClassSVM()):
            for scaler in (None, StandardScaler(), StandardScaler(with_mean=False, with_std=False),
                           RobustScaler(), MinMaxScaler(), MaxAbsScaler()):
                model = detector if scaler is None else make_pipeline(scaler, detector)
                found |= skops_nodes(sio.dumps(model.fit(x)), "m")
    # Inert scalars: a JSON value, a NumPy number (what other inputs or versions may hold).
    scalars = {(f"builtins.{t}", "JsonNode") for t in ("int", "float", "bool", "NoneType")} \
        | {(f"numpy.{t}", "NdArrayNode") for t in ("float32", "int32")}
    assert found <= TRUSTED_NODES and TRUSTED_NODES - found <= scalars
    assert not [t for t, _ in TRUSTED_NODES if t.startswith("numpy.testing")]


def _schema_without_ids(data: bytes):
    """A skops file's schema, its object ids (id() at save time, different every dump) out."""
    import io
    import json
    import zipfile

    def strip(node):
        if isinstance(node, dict):
            return {k: strip(v) for k, v in node.items() if k != "__id__"}
        if isinstance(node, list):
            return [strip(v) for v in node]
        return node

    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        return strip(json.loads(archive.read("schema.json"))), sorted(archive.namelist())


def test_dumps_model_writes_the_file_skops_writes_with_a_compact_schema():
    import numpy as np
    import skops.io as sio

    from fleetscore.model.registry import dumps_model, loads_model
    from fleetscore.model.training import reference_model

    x = np.random.default_rng(0).normal(20, 1, (120, 1))
    model = reference_model().fit(x)
    ours, theirs = dumps_model(model), sio.dumps(model)
    assert _schema_without_ids(ours) == _schema_without_ids(theirs)
    assert len(ours) < len(theirs)  # the indentation is gone
    again = loads_model(ours, "test")
    assert np.array_equal(again.decision_function(x), model.decision_function(x))
    assert np.array_equal(sio.loads(ours, trusted=sio.get_untrusted_types(data=ours))
                          .decision_function(x), model.decision_function(x))
