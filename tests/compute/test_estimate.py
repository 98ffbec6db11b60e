import pytest

from fleetscore.compute.estimate import estimate
from fleetscore.errors import UsageError


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
    # A node busy ~54 minutes of every hour: keeping it warm beats starting two from zero.
    busy = estimate(300_000, per_sensor_ms=20, deadline_min=60)
    assert busy.nodes_warm == 1 and busy.nodes_from_zero == 2
    assert busy.cheaper == "warm"
    # A 15-minute deadline leaves warm nodes idle 45 minutes an hour: from zero is cheaper.
    assert estimate(2_000_000, per_sensor_ms=20).cheaper == "from zero"
    assert estimate(10_000).cheaper == "from zero"


def test_batch_estimate_rejects_impossible_inputs():
    with pytest.raises(UsageError, match="no time"):
        estimate(1000, deadline_min=8)
    with pytest.raises(UsageError, match="unknown VM size 'Standard_X': pass --cores and --price-per-hour"):
        estimate(1000, vm_size="Standard_X")
    # Never a silent guess of the cores: the missing option is named.
    with pytest.raises(UsageError, match="pass --cores,"):
        estimate(1000, vm_size="Standard_X", price_per_hour=1.0)
    with pytest.raises(UsageError, match="pass --price-per-hour,"):
        estimate(1000, vm_size="Standard_X", cores=4)
    with pytest.raises(UsageError, match="--cores"):
        estimate(1000, cores=0)
    with pytest.raises(UsageError):
        estimate(0)
    custom = estimate(1000, vm_size="Standard_X", price_per_hour=1.0, cores=16)
    assert (custom.price_per_hour, custom.cores) == (1.0, 16)
    assert estimate(1000, cores=8).cores == 8
    assert estimate(1000, spot=True).price_per_hour == pytest.approx(0.096 * 0.2)


def test_batch_estimate_figures_match_a_hand_computation():
    # 10,000 sensors at 3.5 core-ms: 35 core-seconds; one task (a 2-minute task would need
    # 34,286 sensors) of 35 s + 10 s container start on one core of one node.
    e = estimate(10_000)
    assert e.scoring_core_s == pytest.approx(35.0)
    assert (e.tasks, e.unit_size) == (1, 10_000)
    assert e.task_s == pytest.approx(45.0)
    assert e.work_min == pytest.approx(0.75)
    assert e.nodes_from_zero == 1
    # Billed: 4 min start + 0.75 min work + 5 min release, at $0.096 an hour.
    assert e.cost_per_run_from_zero == pytest.approx((4 + 0.75 + 5) / 60 * 0.096)
    # 1,000,000 sensors: 30 tasks of 33,334 sensors, 116.67 + 10 s each; 6 min leave room
    # for 2 waves of tasks, so 15 cores: 8 two-core nodes.
    big = estimate(1_000_000)
    assert (big.tasks, big.unit_size) == (30, 33_334)
    assert big.task_s == pytest.approx(33_334 * 0.0035 + 10)
    assert big.nodes_from_zero == 8
    assert big.work_min == pytest.approx(2 * big.task_s / 60)
