"""The benchmark of record at a tiny size: whole `fleetscore run` processes on stores made by
ingest and train; the figures are there and add up (their values are for docs/benchmarks.md)."""

from __future__ import annotations

import json

from benchmarks.bench_users import run_users_bench


def test_the_users_bench_times_whole_runs_at_two_sizes(tmp_path):
    result = run_users_bench((10, 30), repeats=2, workers=1, directory=tmp_path)
    assert [s.sensors for s in result.sizes] == [10, 30]
    assert all(len(s.runs_s) == 2 and min(s.runs_s) > 0 for s in result.sizes)
    assert result.memory_loop_us > 0
    body = result.to_json()
    expected = (result.sizes[1].median_s - result.sizes[0].median_s) / 20 * 1e6
    assert abs(body["marginal_us"] - expected) < 1e-6
    assert (body["vs_memory_loop"] is None) == (expected <= 0)
    assert not list(tmp_path.iterdir())  # the stores went with the bench


def test_fleetscore_bench_reports_the_users_figures_beside_the_inner_ones(cli, tmp_path):
    code, out, _ = cli("bench", "--sensors", "15", "--sample", "5", "--repeats", "1",
                       "--workers", "1", "--dir", str(tmp_path), "--json")
    assert code == 0
    body = json.loads(out)
    assert body["sensors"] == 15 and [s["sensors"] for s in body["as_users"]["sizes"]] == [3, 15]
