"""The pool's autoscale formula (fleetscore/compute/autoscale.formula), evaluated in Python.

The formula may use only what "Create a formula to automatically scale compute nodes in a Batch
pool" (https://learn.microsoft.com/azure/batch/batch-automatic-scaling) documents: the functions
of its Functions table, the methods of its Obtain sample data section, and the operators of its
Operations table. That table has no ceil, floor or round, so the formula rounds the node count
up with comparisons; these tests evaluate it statement by statement, as the service would, with
those documented semantics (a comparison is a double, 1 or 0; avg/min/max flatten their list).
"""

from __future__ import annotations

import math
import re

import pytest

from fleetscore.compute.batch import AUTOSCALE_FORMULA, autoscale_formula

# The Functions table of the page above, and the sample methods of "Obtain sample data".
DOCUMENTED_FUNCTIONS = {"avg", "len", "lg", "ln", "log", "max", "min", "norm", "percentile",
                        "rand", "range", "std", "stop", "sum", "time", "val"}
DOCUMENTED_METHODS = {"GetSample", "GetSamplePeriod", "Count", "HistoryBeginTime",
                      "GetSamplePercent"}
TARGETS = {"$TargetDedicatedNodes", "$TargetLowPriorityNodes", "$NodeDeallocationOption"}


def _statements(formula: str) -> list[str]:
    without_comments = re.sub(r"//[^\n]*", "", formula)
    return [s.strip() for s in without_comments.split(";") if s.strip()]


class Interval:
    def __init__(self, seconds: float) -> None:
        self.seconds = seconds

    def __mul__(self, k: float) -> Interval:
        return Interval(self.seconds * k)

    __rmul__ = __mul__


class Metric:
    """A task metric's history: samples every 30 s, newest last, ``percent`` of them present."""

    def __init__(self, samples: list[float], percent: float = 100.0) -> None:
        self.samples, self.percent = samples, percent

    def GetSample(self, what):  # noqa: N802 - the formula's spelling
        if isinstance(what, Interval):
            return list(self.samples[-int(what.seconds // 30):])
        return list(self.samples[-int(what):])

    def GetSamplePercent(self, what):  # noqa: N802
        return self.percent


def _flatten(args) -> list[float]:
    out = []
    for a in args:
        out.extend(a if isinstance(a, list) else [a])
    return out


class EvaluationError(Exception):
    """The formula cannot be evaluated (the service reports an autoscale run error)."""


def _val(v, i):
    # "val(doubleVec v, double i): Returns the value of the element that is at location i in
    # vector v": an empty vector has no element at 0, and the evaluation fails.
    if not 0 <= int(i) < len(v):
        raise EvaluationError(f"val: no element {int(i)} in a vector of {len(v)}")
    return v[int(i)]


def evaluate(formula: str, pending: Metric) -> dict[str, object]:
    """Run the formula's statements in order; returns every variable it assigned."""
    env: dict[str, object] = {
        "avg": lambda *a: sum(_flatten(a)) / len(_flatten(a)),
        "max": lambda *a: max(_flatten(a)),
        "min": lambda *a: min(_flatten(a)),
        "val": _val,
        "TimeInterval_Minute": Interval(60),
        "taskcompletion": "taskcompletion",
        "v_PendingTasks": pending,
    }
    assigned = {}
    for statement in _statements(formula):
        name, expression = (part.strip() for part in statement.split("=", 1))
        py = re.sub(r"\$(\w+)", r"v_\1", expression)
        if "?" in py:  # one ternary per statement in this formula: cond ? a : b
            cond, rest = py.split("?", 1)
            yes, no = rest.split(":", 1)
            py = f"(({yes}) if ({cond}) else ({no}))"
        value = eval(py, {"__builtins__": {}}, env)  # noqa: S307 - our own formula
        value = float(value) if isinstance(value, bool) else value  # a comparison is 1 or 0
        env["v_" + name.lstrip("$")] = value
        assigned[name] = value
    return assigned


def test_autoscale_formula_uses_only_documented_functions_and_methods():
    body = "\n".join(_statements(AUTOSCALE_FORMULA))
    functions = set(re.findall(r"(?<![.\w$])([A-Za-z_]\w*)\s*\(", body))
    methods = set(re.findall(r"\.(\w+)\s*\(", body))
    assert functions <= DOCUMENTED_FUNCTIONS, functions - DOCUMENTED_FUNCTIONS
    assert methods <= DOCUMENTED_METHODS, methods - DOCUMENTED_METHODS
    for undocumented in ("ceil", "floor", "round", "int", "trunc"):
        assert not re.search(rf"\b{undocumented}\s*\(", body)
    # Formula limits of the same page: at most 100 statements, 8 KB.
    formula = autoscale_formula(65535, tasks_per_node=16)
    assert len(_statements(formula)) <= 100 and len(formula.encode()) <= 8192
    # The documentation is cited where the formula lives.
    assert "learn.microsoft.com/azure/batch/batch-automatic-scaling" in AUTOSCALE_FORMULA
    assert TARGETS <= {s.split("=", 1)[0].strip() for s in _statements(AUTOSCALE_FORMULA)}


@pytest.mark.parametrize("tasks_per_node", [1, 2, 3, 4, 16])
@pytest.mark.parametrize("max_nodes", [1, 10, 20, 1000, 65535])
def test_autoscale_formula_rounds_the_pending_tasks_up_to_whole_nodes(max_nodes, tasks_per_node):
    formula = autoscale_formula(max_nodes, tasks_per_node=tasks_per_node)
    for pending in [0, 1, 2, 3, 5, 7, 8, 9, 15, 16, 17, 19, 20, 21, 39, 40, 41, 99, 1999, 2000,
                    2001, 10**5, 10**6 + 1]:
        out = evaluate(formula, Metric([pending] * 10))
        want = min(max_nodes, math.ceil(pending / tasks_per_node))
        assert out["$nodes"] == want, (pending, out)
        assert out["$TargetDedicatedNodes"] == want and out["$TargetLowPriorityNodes"] == 0
        assert out["$NodeDeallocationOption"] == "taskcompletion"
        assert float(out["$nodes"]).is_integer()


def test_autoscale_formula_follows_the_history_and_falls_back_to_the_last_sample():
    formula = autoscale_formula(10, tasks_per_node=2)
    # Enough samples: the larger of the last sample and the average of the last 5 minutes
    # (10 samples: 4.8 pending tasks -> 2.4 nodes -> 3), older samples ignored.
    assert evaluate(formula, Metric([50, 9, 9, 9, 9, 9, 0, 0, 0, 0, 3]))["$nodes"] == 3
    # A fractional average is rounded up, never down: 0.1 pending tasks -> 1 node.
    assert evaluate(formula, Metric([0] * 9 + [1] + [0]))["$nodes"] == 1
    # Too few samples (a new or idle pool): the last sample alone.
    assert evaluate(formula, Metric([40, 40, 1], percent=20))["$nodes"] == 1
    # A sample of zero pending tasks: the pool stays at zero.
    out = evaluate(formula, Metric([0], percent=0))
    assert out["$nodes"] == 0 and out["$TargetDedicatedNodes"] == 0
    # Spot: the same count as low-priority nodes, none dedicated.
    spot = evaluate(autoscale_formula(10, spot=True, tasks_per_node=2), Metric([5] * 10))
    assert spot["$TargetDedicatedNodes"] == 0 and spot["$TargetLowPriorityNodes"] == 3


# "Example 2: Task-based adjustment" of the page above, its statement for the pending tasks as
# the documentation writes it: the last sample while fewer than 70 percent of the samples
# exist, as max(0, ...) so that no sample at all is 0, else the larger of the last sample and
# the history's average.
DOCS_EXAMPLE_2 = ("$tasks = $samples < 70 ? max(0,$PendingTasks.GetSample(1)) : max( "
                  "$PendingTasks.GetSample(1), avg($PendingTasks.GetSample(TimeInterval_Minute "
                  "* 15)));")


def _normalised(statement: str) -> str:
    return re.sub(r"\s+", "", statement).rstrip(";")


@pytest.mark.reliability("R71")
def test_autoscale_formula_reads_the_pending_tasks_as_the_documented_example():
    statements = _statements(AUTOSCALE_FORMULA)
    pending = next(s for s in statements if s.startswith("$pending "))
    percent = next(s for s in statements if s.startswith("$samplePercent "))
    # The documentation's statement, with our names and a five-minute history.
    documented = (DOCS_EXAMPLE_2.replace("$tasks", "$pending").replace("$samples", "$samplePercent")
                  .replace("TimeInterval_Minute * 15", "TimeInterval_Minute * 5"))
    assert _normalised(pending) == _normalised(documented)
    assert _normalised(percent) == _normalised(
        "$samplePercent = $PendingTasks.GetSamplePercent(TimeInterval_Minute * 5)")
    # Nothing indexes a sample vector that may be empty.
    assert "val(" not in "".join(statements)


@pytest.mark.reliability("R71")
def test_autoscale_formula_evaluates_on_a_new_pool_with_no_sample_yet():
    # A pool just created: no sample of $PendingTasks yet, GetSample(1) is an empty vector.
    for spot in (False, True):
        out = evaluate(autoscale_formula(10, spot=spot, tasks_per_node=2), Metric([], percent=0))
        assert out["$pending"] == 0 and out["$nodes"] == 0
        assert out["$TargetDedicatedNodes"] == 0 and out["$TargetLowPriorityNodes"] == 0
    # The first sample arrives: the pool grows from it alone.
    assert evaluate(autoscale_formula(10, tasks_per_node=2), Metric([5], percent=3))["$nodes"] == 3
