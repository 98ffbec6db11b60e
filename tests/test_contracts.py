"""The typed records that cross a boundary: one encoder and one decoder each, round trips
exact, and a record of the wrong shape refused with a one-line InputError."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fleetscore.contracts import (
    FAILED,
    PENDING,
    STATUSES,
    SUCCEEDED,
    TERMINAL,
    Failure,
    PredictionsFile,
    RunManifest,
    SensorCounts,
    UnitOutcome,
    UnitSummary,
)
from fleetscore.errors import InputError

text = st.text(min_size=1, max_size=12)
count = st.integers(min_value=0, max_value=10**6)
states = st.sampled_from([PENDING, "running", SUCCEEDED, "partial", FAILED])


@st.composite
def outcomes(draw):
    state = draw(states)
    if draw(st.booleans()):
        return UnitOutcome(draw(text), state, result=True, scored=draw(count),
                           failed=draw(count), anomalies=draw(count))
    if draw(st.booleans()):
        return UnitOutcome.failure(draw(text), draw(text), draw(text))
    return UnitOutcome(draw(text), state)


@given(outcomes())
def test_a_unit_outcome_survives_its_json_between_activities(outcome):
    assert UnitOutcome.from_json(json.loads(json.dumps(outcome.to_json()))) == outcome
    assert outcome.terminal == (outcome.state in TERMINAL)


def test_a_unit_outcome_keeps_the_keys_in_flight_orchestrations_hold():
    """A deployment during a run: the orchestration's history holds outcomes the previous
    version wrote, with these keys; the decoder reads them and the encoder writes them."""
    old = {"unit": "u000001", "state": "failed", "result": False,
           "error_kind": "SubmitFailed", "error": "submit failed after 3 attempts"}
    assert UnitOutcome.from_json(old).to_json() == old
    done = {"unit": "u000002", "state": "succeeded", "result": True, "scored": 5, "failed": 0,
            "anomalies": 1}
    assert UnitOutcome.from_json(done).to_json() == done
    assert UnitOutcome.failure("u", "DeadlineExceeded", "x" * 5000).error == "x" * 1000


@pytest.mark.parametrize("body", [{}, {"unit": "u"}, None, ["u", "failed"]])
def test_a_unit_outcome_of_the_wrong_shape_is_refused(body):
    with pytest.raises(InputError, match="outcome of the wrong shape"):
        UnitOutcome.from_json(body)


@st.composite
def manifests(draw):
    return RunManifest(
        window="2024-03-01T01", status=draw(st.sampled_from(sorted(STATUSES))),
        run_id=draw(text), restricted=draw(st.booleans()), started=draw(text),
        duration_s=draw(st.floats(0, 1e6)), units=draw(count),
        sensors=SensorCounts(*(draw(count) for _ in range(5))), points=draw(count),
        anomalies=draw(count),
        failures=tuple(Failure(draw(text), draw(text), draw(text), draw(text))
                       for _ in range(draw(st.integers(0, 3)))),
        kept_from_earlier_run=tuple(draw(st.lists(text, max_size=3))),
        top_anomalous=tuple((draw(text), draw(count)) for _ in range(draw(st.integers(0, 3)))),
        predictions=tuple(PredictionsFile(draw(text), draw(text), draw(text), draw(text))
                          for _ in range(draw(st.integers(0, 3)))),
        unit_results=tuple(UnitSummary(draw(text), draw(states), draw(count), draw(count),
                                       draw(count), draw(st.floats(0, 1e3)))
                           for _ in range(draw(st.integers(0, 3)))),
    )


@given(manifests())
def test_a_run_manifest_survives_its_file(manifest):
    assert RunManifest.decode(manifest.encode(), "runs/x.json") == manifest


@pytest.mark.parametrize("data", [b"", b"[]", b'{"window": "2024-03-01T01", "status": "odd"}',
                                  b'{"window": "2024-03-01T01", "status": "succeeded", '
                                  b'"failures": [1]}'])
def test_a_damaged_run_manifest_is_named(data):
    with pytest.raises(InputError, match=r"run manifest runs/x\.json is damaged"):
        RunManifest.decode(data, "runs/x.json")
