"""``fleetscore replay``: send a readings file to Event Hubs, paced by its own timestamps.

Each reading becomes one event, ``{"TS": "2018-08-28T23:00:05.000Z", "Device": "1", "Tag": "4",
"Value": 84.53}``: the shape the Stream Analytics query reads (``TIMESTAMP BY TS``). Events are
sent in batches per partition key (the Device, so a device's readings stay in order), and the
file's time runs ``speed`` times faster than real time (``--speed max`` sends as fast as the
hub takes them).

Stream Analytics reads ``TS`` as the event time and drops events more than 120 s late (the job's
event ordering policy, stream_analytics/README.md): a historical file sent as it is never reaches
the store. ``shift_to_now`` re-times every reading by one offset, so the file's first reading is
stamped with the moment the replay starts and the rest keep their spacing; sent in real time
(speed 1x, required then: events more than 5 minutes early are dropped too), each arrives on time
and lands in the current hours' windows. To score historical hours at their own times, ingest the
file into the store instead (``fleetscore ingest``).

Failures of Event Hubs (a namespace that cannot be reached, a refused token, a send that keeps
failing after the client's retries) are converted where the SDK is called, in ``Producer``,
into ``StoreError`` (exit 5) with one line naming the namespace and the hub.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from fleetscore.data.readings import iter_readings
from fleetscore.errors import StoreError, UsageError, first_line


def parse_speed(text: str) -> float | None:
    """``60x`` or ``60`` -> 60.0; ``max`` -> None (no pacing)."""
    raw = text.strip().lower()
    if raw in ("max", "0", "0x"):
        return None
    try:
        speed = float(raw.removesuffix("x"))
    except ValueError as exc:
        raise UsageError(f"invalid --speed {text!r}: expected e.g. 60x, 1x or max") from exc
    if speed <= 0:
        raise UsageError(f"invalid --speed {text!r}: must be positive")
    return speed


def event_body(ts_ms: int, device: str, tag: str, value: float) -> bytes:
    ts = datetime.fromtimestamp(ts_ms / 1000, tz=UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"
    return json.dumps({"TS": ts, "Device": device, "Tag": tag, "Value": value}).encode()


@dataclass(frozen=True)
class ReplaySummary:
    sent: int
    batches: int
    rejected: int
    first: str | None
    last: str | None
    seconds: float
    shifted_s: float = 0.0  # added to every reading's timestamp (shift_to_now)


def replay(
    path: str | Path, producer, *, speed: float | None = 60.0, batch_size: int = 500,
    sleep: Callable[[float], None] = time.sleep, clock: Callable[[], float] = time.monotonic,
    progress: Callable[[int], None] | None = None, shift_to_now: bool = False,
    wall_clock: Callable[[], float] = time.time,
) -> ReplaySummary:
    """Send every valid reading of ``path`` through ``producer`` (an EventHubProducerClient or
    anything with its ``create_batch(partition_key=...)`` / ``send_batch`` methods).
    ``shift_to_now``: stamp the first reading with ``wall_clock()`` and every other one with the
    same offset (see the module's docstring); needs ``speed`` 1.0."""
    from azure.eventhub import EventData

    _check_options(speed, batch_size, shift_to_now)
    offset_ms = 0
    started = clock()
    sender = _Sender(producer, batch_size, progress, EventData)
    rejected = 0
    first_ms = last_ms = None
    for table, rejects in iter_readings(path):
        rejected += len(rejects)
        table = table.sort_by([("TS", "ascending")])  # pacing needs time order within a block
        for device, tag, ts_ms, value in zip(table["Device"].to_pylist(), table["Tag"].to_pylist(),
                                             table["TS"].to_pylist(), table["Value"].to_pylist(),
                                             strict=True):
            if first_ms is None:
                first_ms = ts_ms
                if shift_to_now:
                    offset_ms = round(wall_clock() * 1000) - first_ms
            if speed is not None:
                _wait_until(started + (ts_ms - first_ms) / 1000 / speed, clock, sleep,
                            sender.flush_all)
            last_ms = ts_ms if last_ms is None else max(last_ms, ts_ms)
            sender.add(ts_ms + offset_ms, device, tag, value)
    sender.flush_all()
    return ReplaySummary(sender.sent, sender.batches, rejected, _as_sent(first_ms, offset_ms),
                         _as_sent(last_ms, offset_ms), clock() - started, offset_ms / 1000)


def _check_options(speed: float | None, batch_size: int, shift_to_now: bool) -> None:
    if batch_size < 1:
        raise UsageError("--batch-size must be 1 or more")
    if shift_to_now and speed != 1.0:
        raise UsageError("--shift-to-now sends readings at their shifted times: use --speed 1x "
                         "(Stream Analytics drops events more than 5 minutes early)")


def _wait_until(due: float, clock: Callable[[], float], sleep: Callable[[float], None],
                flush_all: Callable[[], None]) -> None:
    wait = due - clock()
    if wait > 0:
        flush_all()  # send what is due before waiting
        sleep(wait)


class _Sender:
    """A batch open per device (its partition key, so a device's readings stay in order),
    sent when it holds ``batch_size`` events or is full, and whenever the replay waits."""

    def __init__(self, producer, batch_size: int, progress: Callable[[int], None] | None,
                 event_data: Callable[[bytes], object]) -> None:
        self.producer, self.batch_size, self.progress = producer, batch_size, progress
        self.event_data = event_data  # azure.eventhub.EventData, imported by ``replay``
        self.pending: dict[str, object] = {}
        self.sent = self.batches = 0

    def add(self, ts_ms: int, device: str, tag: str, value: float) -> None:
        batch = self.pending.get(device)
        if batch is None:
            batch = self.pending[device] = self.producer.create_batch(partition_key=device)
        event = self.event_data(event_body(ts_ms, device, tag, value))
        try:
            batch.add(event)
        except ValueError:  # the batch is full (1 MB): send it, start another
            self.flush(device)
            batch = self.pending[device] = self.producer.create_batch(partition_key=device)
            batch.add(event)
        if len(batch) >= self.batch_size:
            self.flush(device)

    def flush(self, device: str) -> None:
        batch = self.pending.pop(device)
        self.producer.send_batch(batch)
        self.batches += 1
        self.sent += len(batch)
        if self.progress:
            self.progress(self.sent)

    def flush_all(self) -> None:
        for key in list(self.pending):
            self.flush(key)


def _as_sent(ms: int | None, offset_ms: int) -> str | None:
    """A reading's time as sent (shifted by ``offset_ms``), for the summary."""
    return None if ms is None else datetime.fromtimestamp((ms + offset_ms) / 1000,
                                                          tz=UTC).isoformat()


# The producer client's retry policy (azure-eventhub's keyword arguments). The SDK's default
# (3 retries, exponential back-off from 0.8 s) takes about 12 s to give up on a namespace that
# refuses connections; tests lower it.
CLIENT_OPTIONS: dict = {"retry_total": 3}

SENDER_ROLE = "Azure Event Hubs Data Sender"


class Producer:
    """An EventHubProducerClient whose failures are ``StoreError`` naming the hub."""

    def __init__(self, client, target: str):
        self._client, self.target = client, target

    def _failed(self, exc: Exception) -> StoreError:
        from azure.core.exceptions import ClientAuthenticationError
        from azure.eventhub.exceptions import AuthenticationError, ConnectError

        if isinstance(exc, AuthenticationError | ClientAuthenticationError):
            return StoreError(f"Event Hubs refused {self.target}: {first_line(exc)} (sending "
                              f"needs the '{SENDER_ROLE}' role on the hub, see docs/operations.md)")
        if isinstance(exc, ConnectError | OSError):
            return StoreError(f"cannot reach Event Hubs {self.target}: {first_line(exc)}")
        return StoreError(f"cannot send to Event Hubs {self.target}: {first_line(exc)}")

    def _call(self, method, *args, **kwargs):
        from azure.core.exceptions import AzureError
        from azure.eventhub.exceptions import EventHubError

        try:
            return method(*args, **kwargs)
        except (EventHubError, AzureError, OSError) as exc:
            raise self._failed(exc) from exc

    def create_batch(self, partition_key=None):
        return self._call(self._client.create_batch, partition_key=partition_key)

    def send_batch(self, batch):
        return self._call(self._client.send_batch, batch)

    def close(self):
        """Never raises: a failed close must not hide the error that ended the replay."""
        from azure.core.exceptions import AzureError
        from azure.eventhub.exceptions import EventHubError

        try:
            self._client.close()
        except (EventHubError, AzureError, OSError):
            pass


def make_producer(hub: str, *, namespace: str | None, connection_string: str | None) -> Producer:
    try:
        from azure.eventhub import EventHubProducerClient
    except ImportError as exc:  # pragma: no cover - depends on the install
        raise UsageError("replay needs the azure extra: pip install 'fleetscore[azure]'") from exc

    if connection_string:
        try:
            client = EventHubProducerClient.from_connection_string(
                connection_string, eventhub_name=hub, **CLIENT_OPTIONS)
        except ValueError as exc:
            raise UsageError(f"not an Event Hubs connection string: {first_line(exc)}") from exc
        return Producer(client, f"hub {hub} (from the connection string)")
    from azure.identity import DefaultAzureCredential

    client = EventHubProducerClient(fully_qualified_namespace=namespace, eventhub_name=hub,
                                    credential=DefaultAzureCredential(), **CLIENT_OPTIONS)
    return Producer(client, f"{namespace} hub {hub}")
