"""The engine the compute backends run, built once above them: a backend is handed these
callables (``backends.base.Engine``) and never imports the run lifecycle that drives it."""

from __future__ import annotations

from fleetscore.compute.base import Engine
from fleetscore.runs.lifecycle import read_unit_result, run_unit
from fleetscore.runs.ranges import run_span

ENGINE = Engine(run_unit=run_unit, read_unit_result=read_unit_result, run_span=run_span)
