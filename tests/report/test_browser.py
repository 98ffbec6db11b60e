"""The report as a browser shows it: headless Chromium renders the page at phone, laptop and
wide-screen widths, and a probe script reports what is on the page (never pixels).

Headless Chromium will not make a window narrower than 500 px, so the report is laid out in
an iframe exactly as wide as the screen it stands for; its probe writes into the outer page,
which --dump-dom prints."""

from __future__ import annotations

import html
import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pyarrow as pa
import pytest

from fleetscore.compute.local import SequentialBackend
from fleetscore.core.hours import Hour
from fleetscore.report.html import write_report
from fleetscore.runs.engine import ENGINE
from fleetscore.runs.lifecycle import run_hour

INSTALL = "apt-get update && apt-get install -y chromium"

# Runs after the images are decoded; writes its findings into the DOM that --dump-dom prints.
PROBE = """<script>
window.addEventListener("load", () => {
  const oneLine = (el) => { const r = document.createRange(); r.selectNodeContents(el);
    return new Set([...r.getClientRects()].map((x) => Math.round(x.top))).size === 1; };
  const runs = [...document.querySelectorAll("table.runs tr[data-hour]")];
  const probe = {
    width: window.innerWidth,
    scrollWidth: document.documentElement.scrollWidth,
    images: [...document.images].map((i) => ({alt: i.alt, decoded: i.naturalWidth > 0,
                                             shownWidth: i.getBoundingClientRect().width})),
    runs: runs.map((tr) => [tr.cells[0].textContent, tr.cells[1].textContent]),
    hoursOnOneLine: runs.every((tr) => oneLine(tr.cells[0])),
  };
  const outer = window.parent.document;
  const pre = outer.createElement("pre");
  pre.id = "probe";
  pre.textContent = JSON.stringify(probe);
  outer.body.appendChild(pre);
});
</script>"""


def chromium() -> str:
    found = shutil.which("chromium") or ("/usr/bin/chromium" if Path("/usr/bin/chromium").exists()
                                         else None)
    if found:
        return found
    if os.environ.get("CI") == "true":
        pytest.fail(f"headless Chromium is required in CI for the report test: {INSTALL}")
    pytest.skip(f"chromium is not installed ({INSTALL})")


def render(html_file: Path, width: int, tmp_path: Path) -> dict:
    probed = tmp_path / f"probe-{width}.html"
    report = html_file.read_text().replace("</body>", PROBE + "</body>")
    # srcdoc: the frame shares the outer page's origin, so its probe may write there.
    probed.write_text(f"<!doctype html><body style='margin:0'><iframe style='border:0; "
                      f"width:{width}px; height:900px' srcdoc=\"{html.escape(report, quote=True)}\">"
                      "</iframe></body>")
    profile = tmp_path / f"chromium-profile-{width}"
    proc = subprocess.run(
        [chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
         "--no-first-run", "--disable-background-networking", "--disable-component-update",
         "--disable-sync", f"--user-data-dir={profile}", "--hide-scrollbars",
         "--window-size=1400,1000", "--virtual-time-budget=10000", "--dump-dom",
         probed.as_uri()],
        capture_output=True, text=True, timeout=180)
    found = re.search(r'<pre id="probe">(.*?)</pre>', proc.stdout, re.S)
    assert found, f"no probe in the page (exit {proc.returncode}): {proc.stderr[-2000:]}"
    return json.loads(found.group(1).replace("&quot;", '"').replace("&amp;", "&")
                      .replace("&lt;", "<").replace("&gt;", ">"))


@pytest.fixture
def report_with_a_gap(trained_store, tmp_path) -> Path:
    """Hours 00..03: 00 and 02 scored, 01 and 03 never run; the demo's kind of ground truth."""
    for hour in ("2024-03-01T00", "2024-03-01T02"):
        run_hour(trained_store, Hour.parse(hour), SequentialBackend(trained_store, ENGINE))
    end = Hour.parse("2024-03-01T02").start_ms + 10 * 60_000
    truth = pa.table({"Device": ["1"], "Tag": ["1"], "End": pa.array([end], pa.int64()),
                      "Anomaly": pa.array([1], pa.int8())})
    out = tmp_path / "report.html"
    write_report(trained_store, out, first=Hour.parse("2024-03-01T00"),
                 last=Hour.parse("2024-03-01T03"), truth=truth)
    return out


@pytest.mark.parametrize("width", [400, 800, 1280])
def test_report_reads_at_every_width(report_with_a_gap, tmp_path, width):
    page = render(report_with_a_gap, width, tmp_path)
    assert page["width"] == width
    # Nothing wider than the screen: wide tables and charts scroll inside their own frame.
    assert page["scrollWidth"] <= width, page
    assert page["hoursOnOneLine"], "an hour in the runs table wraps"
    assert page["runs"] == [["2024-03-01T00", "succeeded"], ["2024-03-01T01", "not run"],
                            ["2024-03-01T02", "succeeded"], ["2024-03-01T03", "not run"]]
    images = page["images"]
    assert len(images) == 3 and all(i["decoded"] for i in images)
    assert all(i["shownWidth"] >= min(600, width - 40) for i in images)


def test_report_images_say_what_they_show(report_with_a_gap, tmp_path):
    alts = [i["alt"] for i in render(report_with_a_gap, 1280, tmp_path)["images"]]
    heatmap, timelines, share = alts
    assert heatmap.startswith("Heatmap of anomalies over 2024-03-01T00 .. 2024-03-01T03")
    assert "3 sensors" in heatmap and "red cells" in heatmap
    assert timelines.startswith("Line charts of the window means of the 3 sensors")
    assert "1/1" in timelines and "dev_a/t.x" in timelines
    assert "orange bands are the anomalies injected" in timelines
    assert "breaks in a line" in timelines
    assert share.startswith("Line chart of the percentage of scored sensors flagged")
