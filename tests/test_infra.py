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
        "action group": "Microsoft.Insights/actionGroups@",
        "log search alert rules": "Microsoft.Insights/scheduledQueryRules@",
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
    from fleetscore.compute.batch import AUTOSCALE_FORMULA

    batch = TEMPLATES["modules/batch.bicep"]
    assert "loadTextContent('../../fleetscore/compute/autoscale.formula')" in batch
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


# --- alerts in Azure: FleetscoreAlert custom events -> log search alert rules -> an action group ---

ALERTS = TEMPLATES["modules/alerts.bicep"]


def _code(template: str) -> str:
    """The template without its comments (which cite documentation by its address); the "//" of
    a URL in a string follows a colon, not a blank, and stays."""
    return re.sub(r"(^|\s)//.*$", "", template, flags=re.M)


def test_infra_alert_rules_query_the_event_the_app_insights_sink_writes(caplog):
    """The rules count customEvents named as deliver.py names them, split by the custom
    dimensions the sink writes, one rule per fleetscore severity; stateless, every 5 minutes."""
    from fleetscore.alerts.deliver import EVENT_NAME, http_send, message
    from fleetscore.alerts.records import AlertRecord
    from fleetscore.alerts.rules import SEVERITIES, Sink

    assert re.search(r"^resource actionGroup 'Microsoft\.Insights/actionGroups@\d{4}-\d\d-\d\d' =",
                     ALERTS, re.M)  # a stable API version: no -preview
    rule = re.search(r"^resource rules 'Microsoft\.Insights/scheduledQueryRules@\d{4}-\d\d-\d\d' = "
                     r"\[for s in severities: \{\n(.*?)\n\}\]", ALERTS, re.M | re.S).group(1)
    query = re.search(r"^var query = '''\n(.*?)'''", ALERTS, re.M | re.S).group(1)
    assert query.startswith("customEvents\n")
    assert f'| where name == "{EVENT_NAME}"' in query
    assert "query: format(query, s.fleetscore)" in rule
    assert "scopes: [ appInsightsId ]" in rule
    assert "appInsightsId: appInsights.outputs.resourceId" in TEMPLATES["main.bicep"]
    assert re.search(r"^module alerts 'modules/alerts\.bicep' = \{$", TEMPLATES["main.bicep"], re.M)
    for setting in ("kind: 'LogAlert'", "evaluationFrequency: 'PT5M'", "windowSize: 'PT5M'",
                    "timeAggregation: 'Count'", "operator: 'GreaterThan'", "threshold: 0",
                    "autoMitigate: false", "actions: { actionGroups: [ actionGroup.id ] }"):
        assert setting in rule, setting

    # Every fleetscore severity has its rule, with a distinct Azure Monitor severity (0 severest).
    table = re.search(r"^var severities = \[\n(.*?)\n\]", ALERTS, re.M | re.S).group(1)
    mapped = {name: int(sev) for name, sev in
              re.findall(r"\{ fleetscore: '(\w+)', azure: (\d) \}", table)}
    assert set(mapped) == set(SEVERITIES)
    assert len(set(mapped.values())) == len(mapped) and set(mapped.values()) <= set(range(5))
    assert mapped["critical"] < mapped["error"] < mapped["warning"] < mapped["info"]
    assert "severity: s.azure" in rule

    # The dimensions (and the severity filter) are custom dimensions the sink really writes.
    dimensions = re.findall(r"\{ name: '(\w+)', operator: 'Include', values: \[ '\*' \] \}", rule)
    assert dimensions[0] == "alert_key" and {"alert_rule", "alert_group"} <= set(dimensions)
    record = AlertRecord(key="silent|D1|2024-05-01T10:00", rule="silent", on="silent",
                         severity="error", group="D1", first_window="2024-05-01T10:00",
                         last_window="2024-05-01T10:59", hour="2024-05-01T10", run_id="r1",
                         created="2024-05-01T11:05", device="D1")
    with caplog.at_level("WARNING", logger="fleetscore.alerts"):
        http_send(Sink(name="appi", type="app_insights"), message(record, "az://fleetscore"))
    (event,) = [r for r in caplog.records if r.name == "fleetscore.alerts"]
    assert getattr(event, "microsoft.custom_event.name") == EVENT_NAME
    for dimension in dimensions:
        assert f"{dimension} = tostring(customDimensions.{dimension})" in query
        assert getattr(event, dimension) == getattr(record, dimension.removeprefix("alert_"))
    assert 'tostring(customDimensions.alert_severity) == "{0}"' in query
    assert event.alert_severity in SEVERITIES


def test_infra_alert_receivers_come_from_parameters():
    """E-mail and webhook receivers are the deployment's parameters (azd environment values),
    either list may be empty; no address or URL is written in the templates; webhook URLs (often
    their own credential) are secure parameters."""
    main = TEMPLATES["main.bicep"]
    assert re.search(r"^param alertEmails string = ''$", main, re.M)
    assert re.search(r"^@secure\(\)\n@description\(.*\)\nparam alertWebhooks string = ''$", main, re.M)
    assert "emails: alertEmails" in main and "webhooks: alertWebhooks" in main
    assert re.search(r"^@secure\(\)\n@description\(.*\)\nparam webhooks string = ''$", ALERTS, re.M)
    assert re.search(r"^param emails string = ''$", ALERTS, re.M)
    assert "emailReceivers: [for (address, i) in emailList: {" in ALERTS
    assert "webhookReceivers: [for (uri, i) in webhookList: {" in ALERTS
    assert "emailAddress: address\n" in ALERTS and "serviceUri: uri\n" in ALERTS
    webhook = re.search(r"webhookReceivers: \[for .*?\}\]", ALERTS, re.S).group(0)
    assert "useCommonAlertSchema: true" in webhook
    assert re.search(r"^var emailList = filter\(split\(emails, separators\), ", ALERTS, re.M)
    assert re.search(r"^var webhookList = filter\(split\(webhooks, separators\), ", ALERTS, re.M)
    assert not re.search(r"^output .*webhook", ALERTS + main, re.M | re.I)

    params = json.loads((INFRA / "main.parameters.json").read_text())["parameters"]
    assert params["alertEmails"]["value"] == "${FLEETSCORE_ALERT_EMAILS}"
    assert params["alertWebhooks"]["value"] == "${FLEETSCORE_ALERT_WEBHOOKS}"
    for name, param in params.items():
        assert re.fullmatch(r"\$\{[A-Z_]+(=[\w.-]*)?\}", param["value"]), name  # azd values only
    for template, text in TEMPLATES.items():
        code = _code(text)
        assert not re.search(r"[\w.+-]+@[\w-]+\.[A-Za-z]{2,}", code), f"{template}: an e-mail address"
        assert not re.search(r"(https?|ftp)://(?!\$\{)", code), f"{template}: a URL"


def test_infra_sets_the_max_failed_percent_from_a_parameter():
    main = TEMPLATES["main.bicep"]
    assert re.search(r"^param maxFailedPercent string = ''$", main, re.M)  # empty: no limit
    assert "FLEETSCORE_MAX_FAILED_PERCENT: maxFailedPercent" in main
    params = json.loads((INFRA / "main.parameters.json").read_text())["parameters"]
    assert params["maxFailedPercent"]["value"] == "${FLEETSCORE_MAX_FAILED_PERCENT}"


# --- role assignments: who may do what, read from modules/roles.bicep ----------------------------

ROLES = TEMPLATES["modules/roles.bicep"]
# Built-in role definition ids ("Azure built-in roles", learn.microsoft.com/azure/
# role-based-access-control/built-in-roles; for Batch also learn.microsoft.com/azure/batch/
# batch-role-based-access-control).
BUILT_IN = {
    "Azure Batch Job Submitter": "48e5e92e-a480-4e71-aa9c-2778f4c13781",
    "Azure Event Hubs Data Sender": "2b629674-e913-4c01-ae53-ef4638d8f975",
    "Monitoring Metrics Publisher": "3913510d-42f4-4e42-8a64-420c390055eb",
}
CONTRIBUTOR = "b24988ac-6180-42a0-ab88-20f7382dd24c"


def _assignments() -> dict[str, dict]:
    """Each role assignment of roles.bicep: its scope, principal, role id and condition."""
    table = re.search(r"var role = \{(.*?)\n\}", ROLES, re.S).group(1)
    ids = dict(re.findall(r"^\s+(\w+): '([0-9a-f-]{36})'", table, re.M))
    found = {}
    for name, condition, body in re.findall(
            r"^resource (\w+) 'Microsoft\.Authorization/roleAssignments@[\d-]+' = (if \(.*?\) )?\{"
            r"(.*?)\n\}", ROLES, re.M | re.S):
        role = re.search(r"roleDefinitions', role\.(\w+)\)", body).group(1)
        assert "guid(" in body and f"role.{role})" in body, f"{name}: name not derived from its role"
        found[name] = {"scope": re.search(r"^\s+scope: (\w+)", body, re.M).group(1),
                       "principal": re.search(r"principalId: (\w+)", body).group(1),
                       "role": ids[role], "condition": condition.strip()}
    return found


def _granted(principal: str, scope: str) -> set[str]:
    return {a["role"] for a in _assignments().values()
            if a["principal"] == principal and a["scope"] == scope}


def test_infra_function_app_submits_batch_jobs_with_the_least_role():
    """Batch jobs and tasks are data actions: Contributor has none (and can list the account's
    keys); the built-in "Azure Batch Job Submitter" has exactly jobs/* and jobSchedules/*."""
    assert _granted("appPrincipalId", "batchAccount") == {BUILT_IN["Azure Batch Job Submitter"]}
    assert "resource batchAccount 'Microsoft.Batch/batchAccounts@" in ROLES
    assert CONTRIBUTOR not in ALL and "role.contributor" not in ALL
    assert "learn.microsoft.com/azure/batch/batch-role-based-access-control" in ROLES  # the source
    ops = (ROOT / "docs" / "operations.md").read_text()
    assert "az role assignment list" in ops and "Azure Batch Job Submitter" in ops


def test_infra_deploying_user_may_send_to_the_readings_hub():
    """`fleetscore replay` authenticates as the deploying user (the namespace has local auth
    disabled): azd's principal gets "Azure Event Hubs Data Sender" on the readings hub."""
    user = [a for a in _assignments().values() if a["principal"] == "userPrincipalId"
            and a["scope"] == "readingsHub"]
    assert [a["role"] for a in user] == [BUILT_IN["Azure Event Hubs Data Sender"]]
    assert user[0]["condition"] == "if (!empty(userPrincipalId))"
    assert "userPrincipalId: principalId" in TEMPLATES["main.bicep"]
    params = json.loads((INFRA / "main.parameters.json").read_text())["parameters"]
    assert params["principalId"]["value"] == "${AZURE_PRINCIPAL_ID}"
    assert "disableLocalAuth: true" in TEMPLATES["modules/eventhubs.bicep"]


def test_infra_batch_tasks_can_export_telemetry():
    """Application Insights refuses local auth: the pool identity (the tasks' AZURE_CLIENT_ID)
    needs "Monitoring Metrics Publisher" on it, and the app holds what the Batch backend hands to
    tasks: the connection string and the pool identity's client id."""
    assert "disableLocalAuth: true" in TEMPLATES["main.bicep"]
    assert BUILT_IN["Monitoring Metrics Publisher"] in _granted("poolPrincipalId", "appInsights")
    assert BUILT_IN["Monitoring Metrics Publisher"] in _granted("appPrincipalId", "appInsights")
    assert ("APPLICATIONINSIGHTS_CONNECTION_STRING: appInsightsConnectionString"
            in TEMPLATES["modules/functionapp.bicep"])
    assert "appInsightsConnectionString: appInsights.outputs.connectionString" in TEMPLATES["main.bicep"]
    assert ("FLEETSCORE_BATCH_IDENTITY_CLIENT_ID: poolIdentity.outputs.clientId"
            in TEMPLATES["main.bicep"])


def test_infra_every_role_assignment_has_a_known_scope_and_principal():
    principals = {"appPrincipalId", "poolPrincipalId", "streamPrincipalId", "userPrincipalId"}
    for name, a in _assignments().items():
        assert a["principal"] in principals, name
        assert re.search(rf"^resource {a['scope']} '", ROLES, re.M), f"{name}: unknown scope"
        assert (a["condition"] == "if (!empty(userPrincipalId))") == (a["principal"] == "userPrincipalId")


# --- the post-provision hook ---------------------------------------------------------------------


def test_infra_post_provision_hook_builds_in_azds_subscription(tmp_path):
    """`az` may default to another subscription than azd's: the hook names AZURE_SUBSCRIPTION_ID
    (set by azd for the environment). Run the script with a stand-in `az` that records its
    arguments."""
    import shlex
    import subprocess

    hook = INFRA / "scripts" / "build-image.sh"
    command = re.search(r"^az acr build .*?[^\\]$", hook.read_text().replace("\\\n", " "), re.M)
    assert command and '--subscription "$AZURE_SUBSCRIPTION_ID"' in command.group(0)

    fake = tmp_path / "bin" / "az"
    fake.parent.mkdir()
    fake.write_text(f'#!/bin/sh\nprintf "%s\\n" "$@" > {shlex.quote(str(tmp_path / "args"))}\n')
    fake.chmod(0o755)
    env = {"PATH": f"{fake.parent}:/usr/bin:/bin", "AZURE_CONTAINER_REGISTRY_NAME": "crabc",
           "SCORING_IMAGE": "crabc.azurecr.io/fleetscore-scoring:0.1.0",
           "AZURE_SUBSCRIPTION_ID": "00000000-1111-2222-3333-444444444444"}
    proc = subprocess.run(["bash", str(hook)], env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    args = (tmp_path / "args").read_text().splitlines()
    assert args[:2] == ["acr", "build"]
    assert args[args.index("--subscription") + 1] == env["AZURE_SUBSCRIPTION_ID"]
    assert args[args.index("--registry") + 1] == "crabc"
    assert args[args.index("--image") + 1] == "fleetscore-scoring:0.1.0"
    # Outside azd (no subscription): refuse rather than build in whatever `az` defaults to.
    del env["AZURE_SUBSCRIPTION_ID"]
    (tmp_path / "args").unlink()
    proc = subprocess.run(["bash", str(hook)], env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode != 0 and "AZURE_SUBSCRIPTION_ID" in proc.stderr
    assert not (tmp_path / "args").exists()


# --- the Batch pool after the first `up`: quotas and a new VM size -------------------------------


def test_infra_pool_vm_size_changes_through_a_new_pool_name():
    """Batch cannot change a pool's vmSize in place: the pool's name is a parameter, so a new size
    deploys a new pool and the app is pointed at it; docs/operations.md says how."""
    main, batch = TEMPLATES["main.bicep"], TEMPLATES["modules/batch.bicep"]
    assert re.search(r"^param batchPoolName string = 'fleetscore'$", main, re.M)
    assert "poolName: batchPoolName" in main
    assert re.search(r"resource pool 'Microsoft\.Batch/batchAccounts/pools@[\d-]+' = \{\n"
                     r"  parent: account\n  name: poolName\n", batch)
    assert "FLEETSCORE_BATCH_POOL_ID: batch.outputs.poolId" in main
    params = json.loads((INFRA / "main.parameters.json").read_text())["parameters"]
    assert params["batchPoolName"]["value"] == "${FLEETSCORE_BATCH_POOL_NAME=fleetscore}"
    ops = (ROOT / "docs" / "operations.md").read_text()
    assert "azd env set FLEETSCORE_BATCH_POOL_NAME" in ops and "vmSize" in ops


def test_operations_deploy_steps_check_batch_quotas():
    ops = (ROOT / "docs" / "operations.md").read_text()
    deploy = ops[ops.index("## Deploy (azd up)"):ops.index("## Configure")]
    assert "az batch account show" in deploy
    for quota in ("poolQuota", "dedicatedCoreQuota", "lowPriorityCoreQuota"):
        assert quota in deploy
    assert "quota increase" in deploy
