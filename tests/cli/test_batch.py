"""`fleetscore batch estimate` (cli.batch): figures that add up, and no silent guess for a
VM size it does not know."""

from __future__ import annotations


def test_batch_estimate_unknown_vm_size_names_the_missing_options(cli):
    code, _, err = cli("batch", "estimate", "--sensors", "10000", "--vm-size", "Standard_Foo")
    assert code == 2 and "pass --cores and --price-per-hour" in err
    code, _, err = cli("batch", "estimate", "--sensors", "10000", "--vm-size", "Standard_Foo",
                       "--price-per-hour", "0.5")
    assert code == 2 and "pass --cores," in err  # never a silent 2 cores
    code, out, _ = cli("batch", "estimate", "--sensors", "10000", "--vm-size", "Standard_Foo",
                       "--price-per-hour", "0.5", "--cores", "4")
    assert code == 0 and "(4 cores, $0.5000/node-hour)" in out


def test_batch_estimate_prints_figures_that_add_up(cli):
    code, out, _ = cli("batch", "estimate", "--sensors", "10000")
    assert code == 0
    # By hand: 10,000 x 3.5 ms = 35 core-seconds, one task of 35 s + 10 s container start.
    assert "35.0 core-seconds of scoring in 1 task of up to 10,000 sensors, each 45 s" in out
    assert "1 node, done in 45 s (of the 6 min left before the deadline)" in out
    # Billed 4 + 0.75 + 5 minutes at $0.096 an hour.
    assert f"${(4 + 0.75 + 5) / 60 * 0.096:.4f} a run" in out
    assert ">= 2 min" not in out and "6 min of work" not in out

