"""Telemetry for Application Insights: traces per run and unit, and custom metrics.

``setup()`` configures the Azure Monitor OpenTelemetry distro only when
``APPLICATIONINSIGHTS_CONNECTION_STRING`` is set; without it nothing is imported or exported
and every call below is a no-op of the OpenTelemetry API. The Functions app and the scoring
container call ``setup()`` once per process at start.

The Application Insights resource that infra/ deploys has local authentication disabled: it
ingests only telemetry sent with a Microsoft Entra token of an identity holding "Monitoring
Metrics Publisher" on it ("Microsoft Entra authentication for Application Insights",
https://learn.microsoft.com/azure/azure-monitor/app/azure-ad-authentication: a managed identity,
with its client id when it is user-assigned). So ``setup()`` hands the distro a credential: the
Azure SDK's default chain with the user-assigned identity named by ``AZURE_CLIENT_ID`` as its
managed identity (the Function App's own identity in the app, the pool's identity in a Batch
task), as the store and the Batch client authenticate; on a workstation the same chain falls
back to the developer's ``az login``.

Metrics: ``fleetscore.sensors.scored``, ``fleetscore.anomalies``, ``fleetscore.sensors.failed``
(counters), ``fleetscore.unit.duration`` (seconds) and ``fleetscore.arrival.lag`` (seconds from
a window's end to its arrival), each with the ``window`` attribute.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from contextlib import contextmanager

from opentelemetry import metrics, trace

SETTING = "APPLICATIONINSIGHTS_CONNECTION_STRING"
CLIENT_ID_SETTING = "AZURE_CLIENT_ID"  # the user-assigned identity that sends telemetry
_configured: bool | None = None
log = logging.getLogger("fleetscore.telemetry")


def setup(service: str, env: Mapping[str, str] | None = None) -> bool:
    """Configure exporting once per process; True when telemetry goes to Application Insights."""
    global _configured
    if _configured is not None:
        return _configured
    env = os.environ if env is None else env
    connection = env.get(SETTING)
    if not connection:
        _configured = False
        return False
    from azure.monitor.opentelemetry import configure_azure_monitor

    configure_azure_monitor(connection_string=connection, logger_name="fleetscore",
                            resource_attributes={"service.name": service},
                            credential=credential(env))
    _configured = True
    return True


def credential(env: Mapping[str, str]):
    """The managed identity's credential for Entra ID ingestion (see the module's docstring)."""
    from azure.identity import DefaultAzureCredential

    return DefaultAzureCredential(managed_identity_client_id=env.get(CLIENT_ID_SETTING) or None)


def _meter():
    return metrics.get_meter("fleetscore")


@contextmanager
def span(name: str, **attributes):
    with trace.get_tracer("fleetscore").start_as_current_span(name, attributes=attributes) as s:
        yield s


def record_unit(result) -> None:
    """Metrics of one unit's UnitResult."""
    attrs = {"window": result.window}
    meter = _meter()
    meter.create_counter("fleetscore.sensors.scored").add(result.scored, attrs)
    meter.create_counter("fleetscore.anomalies").add(result.anomalies, attrs)
    meter.create_counter("fleetscore.sensors.failed").add(len(result.failures), attrs)
    meter.create_histogram("fleetscore.unit.duration", unit="s").record(result.duration_s, attrs)


def record_arrival_lag(window: str, seconds: float) -> None:
    _meter().create_histogram("fleetscore.arrival.lag", unit="s").record(seconds, {"window": window})
