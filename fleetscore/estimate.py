"""Cost and latency of an hourly run on Azure Batch, on paper (``fleetscore batch estimate``).

A simple model with its assumptions in the open, so operators can replace any of them:
- from zero, the first node is ready after the autoscale evaluation interval (up to 5 min)
  plus the node's start (VM allocation, container image prefetch: about 4 min);
- nodes are billed from allocation until they are released, which autoscale does at its next
  evaluation after their tasks complete (up to 5 min);
- a sensor costs ``per_sensor_ms`` of one core (measured by ``fleetscore bench``);
- VM prices are Linux pay-as-you-go list prices in US dollars, approximate: pass your own.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from .errors import UsageError

# cores, USD per hour (Linux, pay-as-you-go, approximate list prices)
VM_SIZES = {
    "Standard_D2s_v5": (2, 0.096),
    "Standard_D4s_v5": (4, 0.192),
    "Standard_D8s_v5": (8, 0.384),
    "Standard_F2s_v2": (2, 0.0846),
    "Standard_F4s_v2": (4, 0.169),
    "Standard_F8s_v2": (8, 0.338),
}
AUTOSCALE_DELAY_MIN = 5.0
NODE_START_MIN = 4.0
RELEASE_DELAY_MIN = 5.0
TASK_OVERHEAD_S = 10.0  # container start per task on a warm node
MIN_TASK_S = 120.0  # tasks of at least two minutes amortise that overhead
PER_SENSOR_MS = 3.5  # the plain per-sensor path, one core, measured (docs/benchmarks.md)
SPOT_PRICE_FACTOR = 0.2  # spot capacity typically costs 60-90% less; 80% assumed


@dataclass(frozen=True)
class Estimate:
    sensors: int
    vm_size: str
    cores: int
    price_per_hour: float
    per_sensor_ms: float
    deadline_min: float
    work_window_min: float
    unit_size: int
    tasks: int
    nodes_from_zero: int
    nodes_warm: int
    cost_per_run_from_zero: float
    cost_per_hour_warm: float
    ready_after_min: float

    @property
    def cheaper(self) -> str:
        return "warm" if self.cost_per_hour_warm <= self.cost_per_run_from_zero else "from zero"

    @property
    def cost_per_sensor_month(self) -> float:
        best = min(self.cost_per_hour_warm, self.cost_per_run_from_zero)
        return best * 24 * 30 / self.sensors


def estimate(sensors: int, *, vm_size: str = "Standard_D2s_v5", per_sensor_ms: float = PER_SENSOR_MS,
             deadline_min: float = 15.0, price_per_hour: float | None = None,
             spot: bool = False) -> Estimate:
    if sensors < 1:
        raise UsageError("--sensors must be 1 or more")
    if vm_size not in VM_SIZES and price_per_hour is None:
        raise UsageError(f"unknown VM size {vm_size!r}: pass --price-per-hour and --cores, or one of "
                         + ", ".join(VM_SIZES))
    cores, list_price = VM_SIZES.get(vm_size, (2, 0.0))
    price = price_per_hour if price_per_hour is not None else list_price
    price *= SPOT_PRICE_FACTOR if spot else 1.0
    ready_after = AUTOSCALE_DELAY_MIN + NODE_START_MIN
    window = deadline_min - ready_after
    if window <= 0:
        raise UsageError(f"a {deadline_min:g}-minute deadline leaves no time after a node starts "
                         f"from zero ({ready_after:g} min)")
    per_sensor_s = per_sensor_ms / 1000
    unit_size = max(1, math.ceil(MIN_TASK_S / per_sensor_s))
    tasks = math.ceil(sensors / unit_size)
    unit_size = math.ceil(sensors / tasks)
    core_seconds = sensors * per_sensor_s + tasks * TASK_OVERHEAD_S
    nodes = max(1, math.ceil(core_seconds / (cores * window * 60)))
    work_min = core_seconds / (nodes * cores) / 60
    billed_min = NODE_START_MIN + work_min + RELEASE_DELAY_MIN
    warm = max(1, math.ceil(core_seconds / (cores * deadline_min * 60)))
    return Estimate(
        sensors=sensors, vm_size=vm_size, cores=cores, price_per_hour=price,
        per_sensor_ms=per_sensor_ms, deadline_min=deadline_min, work_window_min=window,
        unit_size=unit_size, tasks=tasks, nodes_from_zero=nodes, nodes_warm=warm,
        cost_per_run_from_zero=nodes * billed_min / 60 * price,
        cost_per_hour_warm=warm * price, ready_after_min=ready_after,
    )
