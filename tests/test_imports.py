"""The package's shape, as a contract: every import of ``fleetscore`` (module-level and inside
functions alike) goes down the layers of docs/architecture.md, never up, and the import graph
has no circle. Capabilities of stores and backends are declared on their base classes, never
probed with getattr/hasattr."""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "fleetscore"

# Bottom to top; a module may import its own layer and those below it.
LAYERS: list[tuple[str, set[str]]] = [
    ("values", {"fleetscore", "errors", "contracts", "telemetry", "core", "core.hours",
                "core.sensors", "core.sensor_codes", "core.text", "core.defaults",
                "core.requests"}),
    ("config", {"settings"}),
    ("storage", {"storage", "storage.base", "storage.local", "storage.blob", "storage.counting",
                 "storage.workers"}),
    ("data", {"data", "data.readings", "data.compacted", "data.windows", "data.compaction",
              "data.arrivals", "data.ingest", "data.events", "data.predictions", "data.replay",
              "data.synthetic"}),
    ("model", {"model", "model.bank_saves", "model.registry", "model.versions",
               "model.imports", "model.compare", "model.drift", "model.bank", "model.challengers",
               "model.training", "model.estimators", "model.features", "model.forest",
               "model.trees"}),
    ("scoring", {"scoring", "scoring.score", "scoring.planning", "scoring.backtest"}),
    ("compute", {"compute", "compute.base", "compute.local", "compute.batch",
                 "compute.estimate"}),
    ("alerts", {"alerts", "alerts.rules", "alerts.evaluate", "alerts.records",
                "alerts.deliver", "alerts.noisy"}),
    ("runs", {"runs", "runs.alerting", "runs.locks", "runs.lifecycle", "runs.ranges", "runs.table",
              "runs.engine", "runs.verify", "runs.refit"}),
    ("report", {"report", "report.data", "report.charts", "report.html"}),
    ("entry", {"cli", "cli.alerts", "cli.lifecycle", "cli.common", "cli.data", "cli.models",
               "cli.run", "cli.report", "cli.demo", "cli.backtest", "cli.perf", "cli.batch",
               "cli.app", "runtime", "__main__"}),
]


def _modules() -> dict[str, Path]:
    out = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE).with_suffix("").parts
        name = ".".join(p for p in parts if p != "__init__") or "fleetscore"
        out[name] = path
    return out


def _imports(name: str, path: Path, known: set[str]) -> set[str]:
    """Every fleetscore module ``name`` imports, wherever in the file the import is."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = [p for p in package.split(".") if p and p != "fleetscore"]
                base = base[: len(base) - (node.level - 1)] if node.level > 1 else base
                target = ".".join(base + ([node.module] if node.module else []))
            elif (node.module or "").startswith("fleetscore"):
                target = node.module.removeprefix("fleetscore").lstrip(".")
            else:
                continue
            target = target or "fleetscore"
            for candidate in [target, *(f"{target}.{a.name}".lstrip(".") for a in node.names)]:
                candidate = candidate.removeprefix("fleetscore.") if candidate != "fleetscore" \
                    else candidate
                if candidate in known and candidate != name:
                    found.add(candidate)
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("fleetscore."):
                    candidate = alias.name.removeprefix("fleetscore.")
                    if candidate in known and candidate != name:
                        found.add(candidate)
    return found


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    known = set(modules)
    return {name: _imports(name, path, known) for name, path in modules.items()}


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_every_module_has_a_layer():
    layered = set().union(*(mods for _, mods in LAYERS))
    assert set(_modules()) - layered == set(), "place new modules in a layer"


def test_the_import_graph_has_no_circle():
    assert _cycle(_graph()) is None, " -> ".join(_cycle(_graph()) or [])


def test_imports_only_go_down_the_layers():
    rank = {m: i for i, (_, mods) in enumerate(LAYERS) for m in mods}
    upward = sorted(f"{m} ({LAYERS[rank[m]][0]}) imports {t} ({LAYERS[rank[t]][0]})"
                    for m, targets in _graph().items() for t in targets if rank[t] > rank[m])
    assert upward == []


def test_the_contract_sees_lazy_imports_and_would_fail(tmp_path, monkeypatch):
    """The checks above are not vacuous: an upward import inside a function is found."""
    graph = _graph()
    assert "runs.lifecycle" in graph["runs.engine"]
    assert "data.arrivals" in graph["scoring.planning"]
    graph["storage.base"].add("runs.lifecycle")  # a store importing the run lifecycle
    rank = {m: i for i, (_, mods) in enumerate(LAYERS) for m in mods}
    assert [t for t in graph["storage.base"] if rank[t] > rank["storage.base"]] \
        == ["runs.lifecycle"]
    graph["data.predictions"].add("runs.lifecycle")
    assert _cycle(graph) is not None


PROBE = re.compile(r"\b(?:getattr|hasattr)\(\s*(?:self\.)?_?(?:store|st|backend|be|inner)\b")


def test_no_capability_of_a_store_or_backend_is_probed():
    probes = [f"{path.relative_to(ROOT)}:{n}: {line.strip()}"
              for path in PACKAGE.rglob("*.py")
              for n, line in enumerate(path.read_text().splitlines(), 1) if PROBE.search(line)]
    assert probes == []


SCREEN = 70  # lines: "about 60", a command's option declarations included


def test_every_function_fits_on_a_screen():
    long = sorted(f"{path.relative_to(ROOT)}:{node.lineno} {node.name} "
                  f"({node.end_lineno - node.lineno + 1} lines)"
                  for path in PACKAGE.rglob("*.py")
                  for node in ast.walk(ast.parse(path.read_text()))
                  if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
                  and node.end_lineno - node.lineno + 1 > SCREEN)
    assert long == []
