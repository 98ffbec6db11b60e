"""The report's Backtest section: the model beside chance overall, the worst sensor, what was
fitted on what, and the sensors worst first, capped; on a hand-built backtest whose figures
are known."""

from __future__ import annotations

import re

import fleetscore.report.html as report_html
from fleetscore.report.html import write_report
from fleetscore.scoring.backtest import Backtest, Figures, SensorResult


def _sensor(name: str, flagged: int, points: int = 1_440) -> SensorResult:
    """``flagged`` of ``points`` flagged, 2 of 4 labelled windows hit, half the flags inside
    labels; chance: the same flags, 1.5 windows hit, a tenth inside."""
    model = Figures(points, flagged, 4, 2, 144, flagged // 2, points / 1_440, 10.0, 0.5)
    chance = Figures(points, flagged, 4, 1.5, 144, flagged / 10, points / 1_440, 30.0, 1.2)
    return SensorResult(name, 216, "2026-01-05T01", model, chance)


def _backtest(n: int = 3) -> Backtest:
    # D001/t flags 720 of 1,440 points (50%), the others 14 or fewer: D001/t is the worst.
    sensors = [_sensor("D000/t", 14), _sensor("D001/t", 720)] + [
        _sensor(f"D{i:03d}/t", 14 - i % 10) for i in range(2, n)]
    return Backtest(0.15, ("2026-01-05T00", "2026-01-05T05"), tuple(sensors),
                    (("D999/t", "data in a single hour"),), 1, ("diff", "hour"), "iforest")


def _cells(page: str, css: str) -> list[list[str]]:
    table = re.search(rf"<table class='backtest {css}'>(.*?)</table>", page, re.S).group(1)
    return [re.findall(r"<td>([^<]*)</td>", row) for row in re.findall(r"<tr[^>]*>(.*?)</tr>",
                                                                       table)][1:]


def test_the_section_shows_the_model_beside_chance_and_the_worst_sensor(local_store, tmp_path):
    out = tmp_path / "r.html"
    info = write_report(local_store, out, backtest=_backtest())
    page = out.read_text()
    assert info.endswith(", a backtest of 3 sensors")
    assert "<h2>Backtest</h2>" in page and "No predictions" in page  # an empty store: still shown
    # Overall: 4,320 points, 720 + 14 + 12 = 746 flagged (17.3%); windows 6 of 12 (chance
    # 4.5); flags inside: 360 + 7 + 6 = 373 of 746 (50.0%), chance 74.6 (10.0%); false flags
    # over 3 sensor-days: (746 - 373) / 3 = 124.3, chance (746 - 74.6) / 3 = 223.8; lead 30
    # minutes over 6 hits = 5.0 (chance 90 over 4.5 = 20.0), as a fraction of the window
    # 1.5 / 6 = 25.0% (chance 3.6 / 4.5 = 80.0%).
    model, chance = _cells(page, "overall")
    assert model == ["model", "4,320", "17.3%", "6 of 12", "50.0%", "124.3", "5.0", "25.0%"]
    assert chance == ["chance", "4,320", "17.3%", "4.5 of 12", "10.0%", "223.8", "20.0", "80.0%"]
    assert "Worst sensor: D001/t, 50.0% of its points flagged." in page
    assert "iforest, fitted on value+diff+hour" in page and "first 15%" in page
    assert "1 sensor skipped" in page and "1 labelled window had no scored point" in page


def test_the_sensors_are_listed_worst_first_each_beside_chance(local_store, tmp_path):
    out = tmp_path / "r.html"
    write_report(local_store, out, backtest=_backtest(12))
    rows = _cells(out.read_text(), "sensors")
    names = [r[0] for r in rows[::2]]
    assert names[0] == "D001/t" and len(names) == 12
    shares = [float(r[2].rstrip("%")) for r in rows[::2]]
    assert shares == sorted(shares, reverse=True)
    assert all(r[0] == "chance" for r in rows[1::2])


def test_the_sensors_table_is_capped(local_store, tmp_path, monkeypatch):
    monkeypatch.setattr(report_html, "BACKTEST_SHOWN", 5)
    out = tmp_path / "r.html"
    write_report(local_store, out, backtest=_backtest(12))
    page = out.read_text()
    assert len(_cells(page, "sensors")) == 2 * 5
    assert "12 sensors, the largest share of points flagged first; the 5 flagging the most " \
           "are listed" in page


def test_no_backtest_no_section(local_store, tmp_path):
    out = tmp_path / "r.html"
    write_report(local_store, out)
    assert "Backtest" not in out.read_text()


def test_a_backtest_without_sensors_says_so(local_store, tmp_path):
    bt = Backtest(0.15, None, (), (), 0)
    out = tmp_path / "r.html"
    write_report(local_store, out, backtest=bt)
    assert "No sensor was scored." in out.read_text()
