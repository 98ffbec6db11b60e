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

from fleetscore.errors import UsageError

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
    work_window_min: float  # the deadline less a node's start from zero
    unit_size: int
    tasks: int
    scoring_core_s: float  # sensors x per-sensor cost, without task overhead
    task_s: float  # the longest task: its sensors plus the container start
    work_min: float  # wall time of the tasks on the nodes from zero (one task per core)
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


def machine(vm_size: str, cores: int | None, price_per_hour: float | None) -> tuple[int, float]:
    """Cores and hourly price: the table's, overridden by what the user passes.

    An unknown size needs both: guessing either would print a confident, wrong estimate."""
    if cores is not None and cores < 1:
        raise UsageError(f"invalid --cores {cores}: expected 1 or more")
    if price_per_hour is not None and price_per_hour < 0:
        raise UsageError(f"invalid --price-per-hour {price_per_hour:g}: expected 0 or more")
    known = VM_SIZES.get(vm_size)
    if known is None:
        missing = [name for name, value in (("--cores", cores), ("--price-per-hour", price_per_hour))
                   if value is None]
        if missing:
            raise UsageError(f"unknown VM size {vm_size!r}: pass {' and '.join(missing)}, or use one "
                             "of " + ", ".join(VM_SIZES))
        return cores, price_per_hour
    return (cores if cores is not None else known[0],
            price_per_hour if price_per_hour is not None else known[1])


def wall_s(tasks: int, slots: int, task_s: float) -> float:
    """Tasks run one per core, in waves: the last wave ends the run."""
    return math.ceil(tasks / slots) * task_s


def nodes_for(tasks: int, cores: int, task_s: float, within_s: float) -> int:
    """The fewest nodes whose cores finish every task within ``within_s`` (at least one node;
    when a single task is longer than that, one wave on as many nodes as it takes)."""
    most = max(1, math.ceil(tasks / cores))
    for nodes in range(1, most + 1):
        if wall_s(tasks, nodes * cores, task_s) <= within_s:
            return nodes
    return most


def estimate(sensors: int, *, vm_size: str = "Standard_D2s_v5", per_sensor_ms: float = PER_SENSOR_MS,
             deadline_min: float = 15.0, price_per_hour: float | None = None,
             cores: int | None = None, spot: bool = False) -> Estimate:
    if sensors < 1:
        raise UsageError("--sensors must be 1 or more")
    if per_sensor_ms <= 0:
        raise UsageError(f"invalid --per-sensor-ms {per_sensor_ms:g}: expected more than 0")
    cores, price = machine(vm_size, cores, price_per_hour)
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
    task_s = unit_size * per_sensor_s + TASK_OVERHEAD_S
    nodes = nodes_for(tasks, cores, task_s, window * 60)
    work_min = wall_s(tasks, nodes * cores, task_s) / 60
    billed_min = NODE_START_MIN + work_min + RELEASE_DELAY_MIN
    warm = nodes_for(tasks, cores, task_s, deadline_min * 60)
    return Estimate(
        sensors=sensors, vm_size=vm_size, cores=cores, price_per_hour=price,
        per_sensor_ms=per_sensor_ms, deadline_min=deadline_min, work_window_min=window,
        unit_size=unit_size, tasks=tasks, scoring_core_s=sensors * per_sensor_s, task_s=task_s,
        work_min=work_min, nodes_from_zero=nodes, nodes_warm=warm,
        cost_per_run_from_zero=nodes * billed_min / 60 * price,
        cost_per_hour_warm=warm * price, ready_after_min=ready_after,
    )
