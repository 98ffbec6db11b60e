import pytest

from fleetscore.errors import UsageError
from fleetscore.estimate import estimate


def test_batch_estimate_scales_nodes_with_the_fleet():
    small, large = estimate(10_000), estimate(1_000_000)
    assert small.nodes_from_zero == 1
    assert large.nodes_from_zero > small.nodes_from_zero
    # The work of a run fits the window left after a node starts from zero.
    work_s = 1_000_000 * 3.5 / 1000 + large.tasks * 10
    assert work_s / (large.nodes_from_zero * large.cores) <= large.work_window_min * 60


def test_batch_estimate_tasks_last_at_least_two_minutes():
    e = estimate(100_000, per_sensor_ms=0.05)
    assert e.unit_size * 0.05 / 1000 >= 120 or e.tasks == 1


def test_batch_estimate_warm_pool_wins_only_when_nodes_stay_busy_most_of_the_hour():
    # A node busy ~55 minutes of every hour: keeping it warm beats starting two from zero.
    busy = estimate(330_000, per_sensor_ms=20, deadline_min=60)
    assert busy.cheaper == "warm"
    # A 15-minute deadline leaves warm nodes idle 45 minutes an hour: from zero is cheaper.
    assert estimate(2_000_000, per_sensor_ms=20).cheaper == "from zero"
    assert estimate(10_000).cheaper == "from zero"


def test_batch_estimate_rejects_impossible_inputs():
    with pytest.raises(UsageError, match="no time"):
        estimate(1000, deadline_min=8)
    with pytest.raises(UsageError, match="unknown VM size"):
        estimate(1000, vm_size="Standard_X")
    with pytest.raises(UsageError):
        estimate(0)
    assert estimate(1000, vm_size="Standard_X", price_per_hour=1.0).price_per_hour == 1.0
    assert estimate(1000, spot=True).price_per_hour == pytest.approx(0.096 * 0.2)
