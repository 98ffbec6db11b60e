"""``fleetscore batch estimate``: Azure Batch's nodes, latency and cost on paper."""

from __future__ import annotations

from typing import Annotated

import typer

from fleetscore.cli.common import out
from fleetscore.core.text import count, duration


def batch_estimate(
    sensors: Annotated[int, typer.Option(help="Sensors scored every hour.")],
    vm_size: Annotated[str, typer.Option(help="Batch node VM size.")] = "Standard_D2s_v5",
    cores: Annotated[int | None, typer.Option(
        help="Cores of a node (default: the VM size's; required for a size not in the table).")] = None,
    price_per_hour: Annotated[float | None, typer.Option(
        help="Your price for one node hour in USD (default: the VM size's list price; required "
        "for a size not in the table).")] = None,
    per_sensor_ms: Annotated[float, typer.Option(
        help="Core milliseconds per sensor (fleetscore bench measures it).")] = 3.5,
    deadline: Annotated[float, typer.Option(help="Minutes within which the hour must be scored.")] = 15.0,
    spot: Annotated[bool, typer.Option("--spot", help="Spot (low-priority) nodes.")] = False,
) -> None:
    """Nodes, latency and cost of an hourly run: scale from zero versus a warm pool."""
    from fleetscore.compute.estimate import estimate

    e = estimate(sensors, vm_size=vm_size, per_sensor_ms=per_sensor_ms, deadline_min=deadline,
                 price_per_hour=price_per_hour, cores=cores, spot=spot)
    for line in _estimate_lines(e, spot):
        out.print(line)


def _estimate_lines(e, spot: bool) -> list[str]:
    return [
        f"{count(e.sensors, 'sensor')} an hour on {e.vm_size} ({count(e.cores, 'core')}, "
        f"${e.price_per_hour:.4f}/node-hour{' spot' if spot else ''}), "
        f"{e.per_sensor_ms:g} core-ms per sensor, within {e.deadline_min:g} min",
        f"  work: {e.scoring_core_s:,.1f} core-seconds of scoring in {count(e.tasks, 'task')} of "
        f"up to {count(e.unit_size, 'sensor')}, each {duration(e.task_s)} with its container start",
        f"  from zero: first node after ~{e.ready_after_min:g} min, {count(e.nodes_from_zero, 'node')}, "
        f"done in {duration(e.work_min * 60)} (of the {e.work_window_min:g} min left before the "
        f"deadline), ${e.cost_per_run_from_zero:.4f} a run, "
        f"${e.cost_per_run_from_zero * 24 * 30:,.2f} a month",
        f"  warm pool: {count(e.nodes_warm, 'node')} always on, ${e.cost_per_hour_warm:.4f} an hour, "
        f"${e.cost_per_hour_warm * 24 * 30:,.2f} a month",
        f"  cheaper: {e.cheaper}; ${e.cost_per_sensor_month * 1000:.4f} per 1,000 sensors a month",
    ]
