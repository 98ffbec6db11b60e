"""`fleetscore train` and `models import|list` (cli.models): one documented default, the
import's help, and a failed import that leaves no empty store behind."""

from __future__ import annotations

import re

import skops.io as sio

from fleetscore.core.defaults import DEFAULT_GAMMA, DEFAULT_NU
from fleetscore.model.estimators import DEFAULT
from fleetscore.model.training import reference_model
from tests.cli.conftest import fleetscore


def test_train_and_the_demo_share_one_documented_default(cli, tmp_path, fleet_csv):
    """The default estimator (IsolationForest, chosen by backtest), and the OneClassSVM
    pipeline's documented nu and gamma when it is asked for."""
    store = str(tmp_path / "s")
    assert cli("ingest", str(fleet_csv), "--store", store)[0] == 0
    code, out, _ = cli("train", "--store", store, "--until", "2024-03-01T00")
    assert code == 0 and f"({DEFAULT})" in out and DEFAULT == "iforest"
    code, out, _ = cli("models", "list", "--store", store)
    assert "IsolationForest" in out and "train:iforest" in out
    code, out, _ = cli("train", "--store", store, "--until", "2024-03-01T00", "--estimator",
                       "ocsvm")
    assert code == 0 and f"(nu={DEFAULT_NU:g}, gamma={DEFAULT_GAMMA:g})" in out
    code, out, _ = cli("models", "list", "--store", store)
    assert f"train:nu={DEFAULT_NU},gamma={DEFAULT_GAMMA}" in out.replace(" ", "")


def test_train_features_are_stored_and_shown_with_each_version(cli, tmp_path, fleet_csv):
    store = str(tmp_path / "s")
    assert cli("ingest", str(fleet_csv), "--store", store)[0] == 0
    code, out, err = cli("train", "--store", store, "--until", "2024-03-01T01", "--features",
                         "diff")
    assert code == 0, err
    assert "features value+diff" in out and "left to scikit-learn: 3 sees derived features" in out
    code, out, _ = cli("models", "list", "--store", store)
    assert "on value+diff" in out
    code, out, _ = cli("models", "history", "1/1", "--store", store, "--json")
    assert '"diff"' in out
    code, _, err = cli("train", "--store", store, "--features", "diff,speed")
    assert code == 2 and "unknown feature 'speed'" in err


def test_models_import_help_names_both_file_namings():
    text = re.sub(r"[\s│]+", " ", fleetscore("models", "import", "-h", columns=200).stdout)
    assert "{Device}_{Tag}.skops" in text and "model_{Device}_{Tag}.skops" in text
    assert "--sensor" in text


def _model_file(path):
    import numpy as np

    sio.dump(reference_model().fit(np.arange(20.0).reshape(-1, 1)), path)
    return path


def test_a_failed_import_leaves_no_empty_store_behind(cli, tmp_path):
    models = tmp_path / "models"
    models.mkdir()
    (models / "nounderscore.skops").write_bytes(b"x")
    store = tmp_path / "new-store"
    code, _, err = cli("models", "import", str(models), "--store", str(store))
    assert code == 2 and "nounderscore.skops" in err
    assert not store.exists()


def test_an_ambiguous_model_name_can_be_given_its_sensor(cli, tmp_path):
    models = tmp_path / "models"
    models.mkdir()
    model = _model_file(models / "a_b_c.skops")  # a/b_c or a_b/c
    store = str(tmp_path / "s")
    code, _, err = cli("models", "import", str(models), "--store", store)
    assert code == 2 and "ambiguous" in err and "--sensor DEVICE/TAG" in err
    code, out, _ = cli("models", "import", str(model), "--sensor", "a_b/c", "--store", store)
    assert code == 0 and "imported 1 model from" in out
    assert (tmp_path / "s" / "models" / "a_b" / "c.skops").exists()
    code, _, err = cli("models", "import", str(models), "--sensor", "a_b/c", "--store", store)
    assert code == 2 and "give a file, not a folder" in err


def test_a_failed_import_leaves_no_empty_blob_container_behind(cli, tmp_path, azurite,
                                                                monkeypatch):
    import uuid

    from azure.storage.blob import BlobServiceClient

    monkeypatch.setenv("FLEETSCORE_STORAGE_CONNECTION_STRING", azurite.connection_string)
    models = tmp_path / "models"
    models.mkdir()
    (models / "nounderscore.skops").write_bytes(b"x")
    container = f"t{uuid.uuid4().hex[:20]}"
    code, _, err = cli("models", "import", str(models), "--store", f"az://{container}")
    assert code == 2 and "nounderscore.skops" in err
    service = BlobServiceClient.from_connection_string(azurite.connection_string)
    assert not service.get_container_client(container).exists()
    # A container that existed before is left alone, even when empty.
    service.create_container(container)
    code, _, _ = cli("models", "import", str(models), "--store", f"az://{container}")
    assert code == 2 and service.get_container_client(container).exists()
    service.delete_container(container)

