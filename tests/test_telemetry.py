"""Telemetry is configured only when APPLICATIONINSIGHTS_CONNECTION_STRING is set."""

from __future__ import annotations

import subprocess
import sys

from tests.conftest import ROOT
from tests.identity_endpoint import IdentityEndpoint

PROBE = """
import sys
from fleetscore import telemetry
print("configured" if telemetry.setup("probe") else "off")
print("azure.monitor.opentelemetry" in sys.modules)
from opentelemetry import trace, metrics
print(type(trace.get_tracer_provider()).__name__, type(metrics.get_meter_provider()).__name__)
"""


def _probe(env: dict) -> list[str]:
    proc = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True,
                          timeout=120, cwd=ROOT, env=env)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.split()


def test_telemetry_off_and_silent_without_the_setting():
    env = {"PATH": "/usr/bin:/bin", "HOME": "/tmp"}
    configured, imported, tracer, meter = _probe(env)
    assert (configured, imported) == ("off", "False")
    assert tracer.startswith("Proxy") and meter.startswith("_Proxy")


def test_telemetry_configured_with_the_setting():
    env = {"PATH": "/usr/bin:/bin", "HOME": "/tmp",
           "APPLICATIONINSIGHTS_CONNECTION_STRING":
               "InstrumentationKey=00000000-0000-0000-0000-000000000000;"
               "IngestionEndpoint=http://127.0.0.1:9/"}
    configured, imported, tracer, meter = _probe(env)
    assert (configured, imported) == ("configured", "True")
    assert tracer == "TracerProvider" and meter == "MeterProvider"


def test_telemetry_records_units_once_a_provider_exists_and_nothing_before():
    """Without a provider, record_unit is a no-op (nothing is kept for later); with one, the
    unit's counts arrive as the documented metrics."""
    script = """
from opentelemetry import metrics
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from fleetscore import telemetry
from fleetscore.scoring.score import SensorFailure, UnitResult

unit = UnitResult("u1", "2024-03-01T01", sensors=4, scored=3, points=180, anomalies=7,
                  failures=(SensorFailure("1/2", "ModelError", "broken"),), duration_s=0.25)
telemetry.record_unit(unit)  # no provider yet: dropped
reader = InMemoryMetricReader()
metrics.set_meter_provider(MeterProvider(metric_readers=[reader]))
telemetry.record_unit(unit)
got = {}
for rm in reader.get_metrics_data().resource_metrics:
    for sm in rm.scope_metrics:
        for m in sm.metrics:
            point = m.data.data_points[0]
            got[m.name] = (getattr(point, "value", None) or getattr(point, "sum", None),
                           dict(point.attributes))
print(sorted(got.items()))
"""
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          check=True, env={"PATH": "/usr/bin:/bin", "HOME": "/tmp"})
    got = dict(eval(proc.stdout))  # noqa: S307 - our own subprocess's repr
    window = {"window": "2024-03-01T01"}
    assert got["fleetscore.sensors.scored"] == (3, window)
    assert got["fleetscore.anomalies"] == (7, window)
    assert got["fleetscore.sensors.failed"] == (1, window)
    assert got["fleetscore.unit.duration"] == (0.25, window)


CLIENT_ID = "11111111-2222-3333-4444-555555555555"  # the app's user-assigned identity


def test_telemetry_sends_with_the_managed_identity(monkeypatch):
    """Application Insights is deployed with local auth disabled: setup() must hand the distro
    a credential, and that credential must ask the platform's identity endpoint for a token of
    the user-assigned identity named by AZURE_CLIENT_ID (the only identity the app has)."""
    import azure.monitor.opentelemetry

    from fleetscore import telemetry

    calls = []
    monkeypatch.setattr(azure.monitor.opentelemetry, "configure_azure_monitor",
                        lambda **kwargs: calls.append(kwargs))
    monkeypatch.setattr(telemetry, "_configured", None)
    for name in ("AZURE_CLIENT_ID", "AZURE_TENANT_ID", "AZURE_CLIENT_SECRET", "AZURE_USERNAME",
                 "AZURE_FEDERATED_TOKEN_FILE", "MSI_ENDPOINT", "MSI_SECRET"):
        monkeypatch.delenv(name, raising=False)
    with IdentityEndpoint(client_id=CLIENT_ID) as endpoint:
        for name, value in endpoint.environment().items():
            monkeypatch.setenv(name, value)
        env = {"APPLICATIONINSIGHTS_CONNECTION_STRING":
                   "InstrumentationKey=00000000-0000-0000-0000-000000000000;"
                   "IngestionEndpoint=http://127.0.0.1:9/",
               "AZURE_CLIENT_ID": CLIENT_ID}
        assert telemetry.setup("probe", env) is True
        assert len(calls) == 1
        credential = calls[0].get("credential")
        assert credential is not None, "configure_azure_monitor got no credential"
        assert credential.get_token("https://monitor.azure.com//.default").token == "token"
    assert endpoint.requests and endpoint.requests[-1]["client_id"] == CLIENT_ID
    assert calls[0]["connection_string"] == env["APPLICATIONINSIGHTS_CONNECTION_STRING"]
