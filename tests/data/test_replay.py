"""fleetscore replay: serialization, pacing and batching, through a fake producer client."""

from __future__ import annotations

import json

import pytest

from fleetscore.data.replay import event_body, parse_speed, replay
from fleetscore.errors import UsageError
from tests.conftest import minute_readings, write_readings


class FakeBatch:
    def __init__(self, partition_key, max_events):
        self.partition_key, self.events, self.max_events = partition_key, [], max_events

    def add(self, event):
        if len(self.events) >= self.max_events:
            raise ValueError("EventDataBatch has reached its size limit")
        self.events.append(event)

    def __len__(self):
        return len(self.events)


class FakeProducer:
    """The EventHubProducerClient seam: create_batch(partition_key=...), send_batch, close."""

    def __init__(self, clock, max_events=10_000):
        self.sent, self.clock, self.max_events, self.closed = [], clock, max_events, False

    def create_batch(self, partition_key=None):
        return FakeBatch(partition_key, self.max_events)

    def send_batch(self, batch):
        self.sent.append((self.clock.now, batch.partition_key,
                          [json.loads(e.body_as_str()) for e in batch.events]))

    def close(self):
        self.closed = True


class FakeClock:
    def __init__(self):
        self.now = 0.0
        self.sleeps = []

    def __call__(self):
        return self.now

    def sleep(self, seconds):
        self.sleeps.append(seconds)
        self.now += seconds


def test_replay_event_shape_matches_the_stream_query():
    body = json.loads(event_body(1535497205000, "1", "4", 84.53))
    assert body == {"TS": "2018-08-28T23:00:05.000Z", "Device": "1", "Tag": "4", "Value": 84.53}


def test_replay_speed_parsing():
    assert parse_speed("60x") == 60.0 and parse_speed("1") == 1.0 and parse_speed("max") is None
    for bad in ("fast", "-2x", "0.0x1"):
        with pytest.raises(UsageError):
            parse_speed(bad)


def test_replay_paces_by_timestamps_and_keys_by_device(tmp_path):
    rows = minute_readings("1", "1", "2024-03-01 00:00:00", 10) + \
        minute_readings("2", "7", "2024-03-01 00:00:00", 10)
    path = write_readings(tmp_path / "r.csv", sorted(rows))
    clock = FakeClock()
    producer = FakeProducer(clock)
    summary = replay(path, producer, speed=60.0, batch_size=1000, sleep=clock.sleep, clock=clock)
    assert summary.sent == 80 and summary.rejected == 0
    # 10 minutes of readings at 60x take 10 seconds.
    span_s = (parse_ts_ms(rows[-1][0]) - parse_ts_ms(rows[0][0])) / 1000 / 60
    assert clock.now == pytest.approx(span_s, abs=0.01)
    assert all(key == events[0]["Device"] for _, key, events in producer.sent)
    # Events leave no later than due: each batch's last event is due at or before its send time.
    t0 = parse_ts_ms(rows[0][0])
    for sent_at, _, events in producer.sent:
        due = (parse_ts_ms(events[-1]["TS"].replace("T", " ").rstrip("Z")) - t0) / 1000 / 60
        assert due <= sent_at + 1e-9


def test_replay_batches_respect_the_size_and_the_full_signal(tmp_path):
    path = write_readings(tmp_path / "r.csv", minute_readings("1", "1", "2024-03-01 00:00:00", 30))
    clock = FakeClock()
    producer = FakeProducer(clock, max_events=7)
    summary = replay(path, producer, speed=None, batch_size=25, sleep=clock.sleep, clock=clock)
    sizes = [len(events) for _, _, events in producer.sent]
    assert summary.sent == 120 == sum(sizes) and max(sizes) == 7  # full batches were sent early
    assert clock.sleeps == []  # --speed max never waits
    producer2 = FakeProducer(clock)
    replay(path, producer2, speed=None, batch_size=25, sleep=clock.sleep, clock=clock)
    assert [len(e) for _, _, e in producer2.sent] == [25, 25, 25, 25, 20]


def test_replay_skips_bad_rows_and_counts_them(tmp_path):
    rows = minute_readings("1", "1", "2024-03-01 00:00:00", 2) + [("bad", "1", "1", "1")]
    clock = FakeClock()
    summary = replay(write_readings(tmp_path / "r.csv", rows), FakeProducer(clock), speed=None,
                     sleep=clock.sleep, clock=clock)
    assert (summary.sent, summary.rejected) == (8, 1)


def test_replay_reference_data(refdata):
    clock = FakeClock()
    producer = FakeProducer(clock)
    summary = replay(refdata, producer, speed=3600.0, sleep=clock.sleep, clock=clock)
    assert summary.sent == 17_768
    assert {key for _, key, _ in producer.sent} == {"1", "2", "3"}
    assert clock.now == pytest.approx((4 * 3600 + 12 * 60) / 3600, rel=0.02)


@pytest.mark.parametrize("args", [
    ["replay", "{csv}"],
    ["replay", "{csv}", "--namespace", "ns", "--connection-string-env", "X"],
    ["replay", "{csv}", "--connection-string-env", "FLEETSCORE_UNSET_VARIABLE"],
    ["replay", "{csv}", "--namespace", "ns", "--speed", "warp"],
    ["replay", "/missing.csv", "--namespace", "ns"],
])
def test_replay_bad_arguments(args, tmp_path):
    import subprocess
    import sys

    from tests.conftest import ROOT

    path = write_readings(tmp_path / "r.csv", minute_readings("1", "1", "2024-03-01 00:00:00", 1))
    args = [a.format(csv=path) for a in args]
    proc = subprocess.run([sys.executable, "-m", "fleetscore", *args], capture_output=True,
                          text=True, timeout=120, cwd=ROOT)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr and proc.stderr.strip()


def parse_ts_ms(text: str) -> int:
    from fleetscore.data.readings import parse_ts

    return parse_ts(text)


# --- historical readings through Stream Analytics: --shift-to-now --------------------------------


def _through_the_job(producer, wall0_ms: int, policy):
    """What the Stream Analytics job does with the sent events: arrival = the send time."""
    from datetime import UTC, datetime

    from tests.data.test_stream_analytics import EventOrdering

    job = EventOrdering(*policy)
    out = []
    for sent_at, _, events in producer.sent:
        arrival = wall0_ms + round(sent_at * 1000)
        for e in events:
            ts = datetime.fromisoformat(e["TS"].replace("Z", "+00:00")).astimezone(UTC)
            out.append((int(ts.timestamp() * 1000), job.accept(int(ts.timestamp() * 1000), arrival)))
    return out


def test_replay_shift_to_now_keeps_spacing_and_arrives_on_time(tmp_path):
    from tests.data.test_stream_analytics import ordering_policy

    rows = minute_readings("1", "1", "2018-08-28 23:00:00", 15) + \
        minute_readings("2", "7", "2018-08-28 23:00:00", 15, seed=1)
    path = write_readings(tmp_path / "r.csv", sorted(rows))
    clock = FakeClock()
    producer = FakeProducer(clock)
    wall0 = 1_767_610_200.0  # 2026-01-05T10:50:00Z
    summary = replay(path, producer, speed=1.0, sleep=clock.sleep, clock=clock,
                     shift_to_now=True, wall_clock=lambda: wall0)
    first = parse_ts_ms(sorted(rows)[0][0])
    assert summary.shifted_s == wall0 - first / 1000
    assert summary.first == "2026-01-05T10:50:00+00:00"  # the first reading is stamped now
    sent = sorted(parse_ts_ms(e["TS"].replace("T", " ").rstrip("Z"))
                  for _, _, events in producer.sent for e in events)
    original = sorted(parse_ts_ms(r[0]) for r in rows)
    assert [s - o for s, o in zip(sent, original, strict=True)] == [sent[0] - original[0]] * len(rows)
    # Through the job's event ordering policy, every event is kept at its own (shifted) time.
    judged = _through_the_job(producer, int(wall0 * 1000), ordering_policy())
    assert len(judged) == len(rows) and all(kept == ts for ts, kept in judged)


def test_replay_of_historical_readings_without_the_shift_never_reaches_a_window(tmp_path):
    from tests.data.test_stream_analytics import ordering_policy

    path = write_readings(tmp_path / "r.csv", minute_readings("1", "1", "2018-08-28 23:00:00", 5))
    clock = FakeClock()
    producer = FakeProducer(clock)
    replay(path, producer, speed=60.0, sleep=clock.sleep, clock=clock)
    wall0 = 1_767_610_200_000
    action, out_of_order, late = ordering_policy()
    assert all(kept is None for _, kept in _through_the_job(producer, wall0, ordering_policy()))
    # Under the former policy (Adjust) they were stamped with the current time instead.
    adjusted = _through_the_job(producer, wall0, ("Adjust", out_of_order, late))
    assert all(kept is not None and kept >= wall0 - late * 1000 for _, kept in adjusted)


def test_replay_shift_to_now_needs_real_time(tmp_path):
    path = write_readings(tmp_path / "r.csv", minute_readings("1", "1", "2018-08-28 23:00:00", 2))
    clock = FakeClock()
    for speed in (60.0, None):
        with pytest.raises(UsageError, match="--speed 1x"):
            replay(path, FakeProducer(clock), speed=speed, sleep=clock.sleep, clock=clock,
                   shift_to_now=True)


# --- Event Hubs unavailable or refusing: one line, exit 5 --------------------------------------


def _nothing_listens(host: str, port: int) -> bool:
    import socket

    with socket.socket() as s:
        s.settimeout(1)
        return s.connect_ex((host, port)) != 0


@pytest.mark.reliability("R60")
def test_replay_to_an_unreachable_namespace_exits_5_with_one_line(tmp_path, monkeypatch, cli):
    """The real producer client (AMQP over TLS on port 5671) against a namespace where nothing
    listens: the connection is refused, and replay says so in one line with exit 5."""
    import time

    from fleetscore.data import replay as module

    if not _nothing_listens("127.0.0.1", 5671):
        pytest.skip("something listens on 127.0.0.1:5671 here")
    monkeypatch.setattr(module, "CLIENT_OPTIONS", {"retry_total": 0})  # the default: about 12 s
    path = write_readings(tmp_path / "r.csv", minute_readings("1", "1", "2024-03-01 00:00:00", 2))
    started = time.monotonic()
    code, out, err = cli("replay", str(path), "--namespace", "127.0.0.1", "--speed", "max")
    assert code == 5, err
    assert "internal error" not in err and "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert "cannot reach Event Hubs 127.0.0.1 hub readings" in lines[0]
    assert "Connection refused" in lines[0]
    assert time.monotonic() - started < 30


class _RefusingClient:
    """An EventHubProducerClient whose token is refused, as Event Hubs answers an identity
    without a data role (the namespace has local auth disabled)."""

    def __init__(self):
        self.closed = False

    def create_batch(self, partition_key=None):
        from azure.eventhub.exceptions import AuthenticationError

        raise AuthenticationError("Unauthorized access. 'Send' claim(s) are required to perform "
                                  "this operation.\nTrackingId: 0")

    def send_batch(self, batch):  # pragma: no cover - never reached
        raise AssertionError

    def close(self):
        self.closed = True


@pytest.mark.reliability("R61")
def test_replay_refused_for_lack_of_the_sender_role_names_the_role(tmp_path, monkeypatch, cli):
    from fleetscore.data import replay as module

    client = _RefusingClient()
    monkeypatch.setattr(module, "make_producer", lambda hub, **kw: module.Producer(
        client, f"{kw['namespace']} hub {hub}"))
    path = write_readings(tmp_path / "r.csv", minute_readings("1", "1", "2024-03-01 00:00:00", 2))
    code, out, err = cli("replay", str(path), "--namespace", "ns.servicebus.windows.net",
                         "--speed", "max")
    assert code == 5 and len(err.strip().splitlines()) == 1, err
    assert "Event Hubs refused ns.servicebus.windows.net hub readings" in err
    assert "'Azure Event Hubs Data Sender'" in err
    assert client.closed


def test_replay_client_options_bound_the_default_retries(monkeypatch):
    """make_producer hands CLIENT_OPTIONS to the SDK client (so the retries above are the real
    client's), on both the identity and the connection-string paths."""
    from fleetscore.data import replay as module

    monkeypatch.setattr(module, "CLIENT_OPTIONS", {"retry_total": 1})
    for producer in (
        module.make_producer("readings", namespace="ns.servicebus.windows.net",
                             connection_string=None),
        module.make_producer("readings", namespace=None, connection_string=(
            "Endpoint=sb://127.0.0.1/;SharedAccessKeyName=test;SharedAccessKey=not-a-key")),
    ):
        assert producer._client._config.retry_total == 1  # noqa: SLF001 - the SDK's config
        producer.close()
    with pytest.raises(UsageError, match="not an Event Hubs connection string"):
        module.make_producer("readings", namespace=None, connection_string="garbage")


def test_replay_is_in_the_azure_extra():
    """replay's error for a missing SDK tells users to install the azure extra: it must hold
    azure-eventhub, pinned as in requirements.txt."""
    import tomllib

    from tests.conftest import ROOT

    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    pins = {d.partition("==")[0]: d for d in extras["azure"]}
    requirements = (ROOT / "requirements.txt").read_text().split()
    assert pins.get("azure-eventhub") in requirements
