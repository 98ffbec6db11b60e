"""infra/ (Bicep for azd) names every resource, sets exactly the settings the code reads, and
holds no secret. No Bicep compiler runs here: these checks read the templates as text."""

from __future__ import annotations

import json
import re

from tests.conftest import ROOT

INFRA = ROOT / "infra"
TEMPLATES = {p.relative_to(INFRA).as_posix(): p.read_text() for p in INFRA.rglob("*.bicep")}
ALL = "\n".join(TEMPLATES.values())

# Read by the code but deliberately not set in Azure: development-only or CLI-only settings.
NOT_IN_AZURE = {
    "FLEETSCORE_STORAGE_CONNECTION_STRING",  # the cloud uses the account URL and an identity
    "FLEETSCORE_BATCH_ACCOUNT_NAME", "FLEETSCORE_BATCH_ACCOUNT_KEY",  # shared keys: dev only
    "FLEETSCORE_UNIT_SIZE",  # automatic unless an operator sets it
    "FLEETSCORE_WORKERS", "FLEETSCORE_INTERVAL_SECONDS",  # the CLI's
}
# Set for the Functions host and the Azure SDKs rather than read by fleetscore itself.
HOST_SETTINGS = {
    "AzureWebJobsStorage__accountName", "AzureWebJobsStorage__credential",
    "AzureWebJobsStorage__clientId", "AZURE_CLIENT_ID", "APPLICATIONINSIGHTS_AUTHENTICATION_STRING",
    "WindowsEventHub__credential", "WindowsEventHub__clientId",
}


def _app_settings() -> set[str]:
    keys = set()
    for block in re.findall(r"appSettings: \{(.*?)\n    \}", TEMPLATES["main.bicep"], re.S):
        keys |= set(re.findall(r"^\s+(\w+):", block, re.M))
    union = re.search(r"union\(appSettings, \{(.*?)\}\)", TEMPLATES["modules/functionapp.bicep"], re.S)
    keys |= set(re.findall(r"^\s+(\w+):", union.group(1), re.M))
    return keys


def _read_by_code() -> set[str]:
    code = (ROOT / "fleetscore" / "settings.py").read_text()
    names = set(re.findall(r'"(FLEETSCORE_[A-Z_]+)"', code))
    names |= {f"FLEETSCORE_BATCH_{n}" for n in re.findall(r'text\("([A-Z_]+)"\)', code)}
    triggers = (ROOT / "triggers" / "__init__.py").read_text() + (ROOT / "host.json").read_text()
    names |= set(re.findall(r"%([A-Za-z_]+)%", triggers))
    names |= {"WindowsEventHub__fullyQualifiedNamespace", "APPLICATIONINSIGHTS_CONNECTION_STRING"}
    return names


def test_infra_names_every_resource():
    expected = {
        "storage account": "br/public:avm/res/storage/storage-account",
        "function app (flex consumption)": "'FlexConsumption'",
        "python 3.11": "runtime: { name: 'python', version: '3.11' }",
        "user-assigned identities": "br/public:avm/res/managed-identity/user-assigned-identity",
        "batch account": "Microsoft.Batch/batchAccounts@",
        "batch pool": "Microsoft.Batch/batchAccounts/pools@",
        "container registry": "Microsoft.ContainerRegistry/registries@",
        "event hubs namespace": "Microsoft.EventHub/namespaces@",
        "readings hub": "name: 'readings'",
        "windows hub": "name: 'windows'",
        "stream analytics job": "Microsoft.StreamAnalytics/streamingjobs@",
        "application insights": "br/public:avm/res/insights/component",
        "log analytics": "br/public:avm/res/operational-insights/workspace",
        "role assignments": "Microsoft.Authorization/roleAssignments@",
    }
    missing = [what for what, text in expected.items() if text not in ALL]
    assert not missing, missing
    for container in ("storeContainer", "deploymentContainer"):
        assert f"name: {container}" in TEMPLATES["main.bicep"]


def test_infra_modules_and_loaded_files_exist():
    for template, text in TEMPLATES.items():
        base = (INFRA / template).parent
        for ref in re.findall(r"module \w+ '([^']+\.bicep)'", text):
            assert (base / ref).exists(), f"{template} uses a missing module {ref}"
        for ref in re.findall(r"loadTextContent\('([^']+)'\)", text):
            assert (base / ref).exists(), f"{template} loads a missing file {ref}"


def test_infra_app_settings_match_the_settings_the_code_reads():
    set_in_azure = _app_settings()
    read = _read_by_code()
    assert set_in_azure - read - HOST_SETTINGS == set(), "set in Azure, read by nothing"
    assert read - set_in_azure == NOT_IN_AZURE, "read by the code, missing in Azure"
    local = set(json.loads((ROOT / "local.settings.example.json").read_text())["Values"])
    assert read <= local


def test_infra_holds_no_secret_and_prefers_identities():
    assert "allowSharedKeyAccess: false" in TEMPLATES["main.bicep"]
    assert "disableLocalAuth: true" in TEMPLATES["modules/eventhubs.bicep"]
    assert "allowedAuthenticationModes: [ 'AAD' ]" in TEMPLATES["modules/batch.bicep"]
    assert "adminUserEnabled: false" in TEMPLATES["modules/registry.bicep"]
    assert TEMPLATES["modules/stream.bicep"].count("authenticationMode: 'Msi'") == 3
    for forbidden in ("listKeys(", "AccountKey=", "SharedAccessKey", "password:"):
        assert forbidden not in ALL


def test_infra_pool_uses_the_one_autoscale_formula():
    from fleetscore.backends.batch import AUTOSCALE_FORMULA

    batch = TEMPLATES["modules/batch.bicep"]
    assert "loadTextContent('../../fleetscore/backends/autoscale.formula')" in batch
    for token in ("{max_nodes}", "{tasks_per_node}", "{dedicated}", "{low_priority}"):
        assert token in AUTOSCALE_FORMULA and f"'{token}'" in batch
    assert "evaluationInterval: 'PT5M'" in batch


def test_infra_post_provision_hook_builds_the_scoring_image():
    azure = (ROOT / "azure.yaml").read_text()
    assert "postprovision" in azure and "infra/scripts/build-image.sh" in azure
    hook = (INFRA / "scripts" / "build-image.sh").read_text()
    assert "az acr build" in hook and "scoring_container/Dockerfile" in hook
    outputs = set(re.findall(r"^output (\w+)", TEMPLATES["main.bicep"], re.M))
    assert {"AZURE_CONTAINER_REGISTRY_NAME", "SCORING_IMAGE"} <= outputs


def test_infra_workbook_holds_the_operations_queries():
    workbook = json.loads((INFRA / "workbook.json").read_text())
    queries = [i["content"]["query"] for i in workbook["items"] if i["type"] == 3]
    ops = (ROOT / "docs" / "operations.md").read_text()
    assert len(queries) == 5 and all(q in ops for q in queries)
    for metric in ("fleetscore.arrival.lag",):
        assert any(metric in q for q in queries)
