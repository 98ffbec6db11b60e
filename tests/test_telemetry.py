"""Telemetry is configured only when APPLICATIONINSIGHTS_CONNECTION_STRING is set."""

from __future__ import annotations

import subprocess
import sys

from tests.conftest import ROOT

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


def test_telemetry_records_units_without_a_provider(trained_store):
    from fleetscore.hours import Hour
    from fleetscore.scoring import score_unit
    from fleetscore.sensors import Sensor
    from fleetscore import telemetry

    result = score_unit(trained_store, Hour.parse("2024-03-01T01"), [Sensor("1", "1")])
    telemetry.record_unit(result)  # a no-op, and no error, without configuration
    telemetry.record_arrival_lag("2024-03-01T01", 12.5)
    with telemetry.span("fleetscore.test", window="2024-03-01T01") as span:
        span.set_attribute("sensors", 1)
