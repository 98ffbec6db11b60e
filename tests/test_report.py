from fleetscore.backends.local import SequentialBackend
from fleetscore.hours import Hour
from fleetscore.models import model_path
from fleetscore.report import write_report
from fleetscore.runs import run_window
from fleetscore.sensors import Sensor


def test_report_is_self_contained_with_pictures_runs_and_failures(trained_store, tmp_path):
    run_window(trained_store, Hour.parse("2024-03-01T01"), SequentialBackend(trained_store))
    trained_store.put(model_path(Sensor("1", "2")), b"broken")
    run_window(trained_store, Hour.parse("2024-03-01T02"), SequentialBackend(trained_store))
    out = tmp_path / "report.html"
    info = write_report(trained_store, out)
    html = out.read_text()
    assert "2 hours, 2 runs" in info
    assert html.count("data:image/png;base64,") == 3
    assert "<script" not in html and "http://" not in html and "https://" not in html
    assert "2024-03-01T01" in html and "partial" in html and "ModelError" in html


def test_report_on_an_empty_store(local_store, tmp_path):
    out = tmp_path / "r.html"
    assert "0 hours" in write_report(local_store, out)
    assert "No predictions" in out.read_text()
