import numpy as np
import pytest

from fleetscore.data.readings import iter_readings, parse_ts
from fleetscore.errors import InputError


def _read(path, **kw):
    tables, rejects = [], []
    for table, rej in iter_readings(path, **kw):
        tables.append(table)
        rejects += rej
    rows = [r for t in tables for r in t.to_pylist()]
    return rows, rejects


def test_good_file_parses_every_row(tmp_path):
    p = tmp_path / "r.csv"
    p.write_text("TS,Device,Tag,Value\n2018-08-28 23:00:05.000,1,4,84.53\n2018-08-28 23:00:10,2,1,1e3\n")
    rows, rejects = _read(p)
    assert rejects == []
    assert rows == [
        {"Device": "1", "Tag": "4", "TS": parse_ts("2018-08-28 23:00:05"), "Value": 84.53},
        {"Device": "2", "Tag": "1", "TS": parse_ts("2018-08-28 23:00:10"), "Value": 1000.0},
    ]


@pytest.mark.reliability("R1")
@pytest.mark.parametrize("block_bytes", [16, 64, 1 << 20])
def test_bad_rows_are_named_by_line_and_good_rows_kept(tmp_path, block_bytes):
    p = tmp_path / "r.csv"
    p.write_text(
        "TS,Device,Tag,Value\n"
        "2018-08-28 23:00:05.000,1,1,10\n"      # 2 ok
        "not-a-time,1,1,10\n"                   # 3 bad TS
        "2018-08-28 23:00:05.000,1,1,abc\n"     # 4 non-numeric
        "2018-08-28 23:00:05.000,1,1,nan\n"     # 5 NaN
        "2018-08-28 23:00:05.000,1,1,inf\n"     # 6 infinite
        "2018-08-28 23:00:05.000,1,1\n"         # 7 missing field
        "2018-08-28 23:00:05.000,../x,1,3\n"    # 8 bad id
        "2018-08-28 23:00:05.000,1,1,\n"        # 9 empty value
        "2018-08-28 23:00:06.000,2,2,20\n"      # 10 ok
    )
    rows, rejects = _read(p, block_bytes=block_bytes)
    assert [(r["Device"], r["Value"]) for r in rows] == [("1", 10.0), ("2", 20.0)]
    assert [r.line for r in rejects] == [3, 4, 5, 6, 7, 8, 9]
    reasons = " | ".join(r.reason for r in rejects)
    for word in ("bad TS", "not a number", "not finite", "expected 4 fields", "invalid Device"):
        assert word in reasons


def test_fast_path_rejects_bad_ids_and_nan_with_line_numbers(tmp_path):
    # Everything parses as numbers and times, so the vectorised path handles it.
    p = tmp_path / "r.csv"
    p.write_text("TS,Device,Tag,Value\n2018-08-28 23:00:05,1,1,1\n2018-08-28 23:00:05,a b,1,1\n"
                 "2018-08-28 23:00:05,1,1,NaN\n2018-08-28 23:00:05,1,..,2\n")
    rows, rejects = _read(p)
    assert len(rows) == 1
    assert [(r.line, r.reason.split()[0]) for r in rejects] == [(3, "invalid"), (4, "Value"), (5, "invalid")]


def test_timestamps_with_offsets_are_converted_to_utc(tmp_path):
    p = tmp_path / "r.csv"
    p.write_text("TS,Device,Tag,Value\n2018-08-29T01:00:05+01:00,1,1,1\n2018-08-29T00:00:05Z,1,2,2\n")
    rows, _ = _read(p)
    assert rows[0]["TS"] == rows[1]["TS"] == parse_ts("2018-08-29 00:00:05")


@pytest.mark.reliability("R3")
def test_missing_empty_and_wrong_header_files(tmp_path):
    with pytest.raises(InputError, match="no such file"):
        _read(tmp_path / "absent.csv")
    empty = tmp_path / "empty.csv"
    empty.write_text("")
    with pytest.raises(InputError, match="empty.*TS,Device,Tag,Value"):
        _read(empty)
    wrong = tmp_path / "wrong.csv"
    wrong.write_text("time,device,tag,value\n")
    with pytest.raises(InputError, match="wrong header.*expected TS,Device,Tag,Value"):
        _read(wrong)


def test_bom_and_crlf_are_accepted(tmp_path):
    p = tmp_path / "r.csv"
    p.write_bytes(b"\xef\xbb\xbfTS,Device,Tag,Value\r\n2018-08-28 23:00:05,1,1,1.5\r\n")
    rows, rejects = _read(p)
    assert rejects == [] and rows[0]["Value"] == 1.5


@pytest.mark.reliability("R2")
def test_invalid_utf8_line_is_rejected_alone(tmp_path):
    p = tmp_path / "r.csv"
    p.write_bytes(b"TS,Device,Tag,Value\n2018-08-28 23:00:05,1,1,1\n2018-08-28 23:00:05,\xff,1,1\n")
    rows, rejects = _read(p)
    assert len(rows) == 1 and rejects[0].line == 3 and "UTF-8" in rejects[0].reason


@pytest.mark.parametrize("text, window_end", [
    ("2024-03-01 01:00:00.0004", "2024-03-01 01:01:00"),   # after 01:00: the next window
    ("2024-03-01 01:00:00.000", "2024-03-01 01:00:00"),    # exactly the end: that window
    ("2024-03-01 00:59:59.9996", "2024-03-01 01:00:00"),
    ("2024-03-01 01:00:00.000001+00:00", "2024-03-01 01:01:00"),
])
def test_sub_millisecond_readings_fall_in_the_right_window(text, window_end, tmp_path):
    from datetime import datetime

    from fleetscore.data.readings import iter_readings, parse_ts
    from fleetscore.data.windows import window_end_ms

    expected = int(datetime.fromisoformat(window_end + "+00:00").timestamp() * 1000)
    assert window_end_ms(np.array([parse_ts(text)]), 60)[0] == expected
    path = tmp_path / "r.csv"
    path.write_text(f"TS,Device,Tag,Value\n{text},1,1,1.0\n")
    [(table, rejects)] = list(iter_readings(path))
    assert not rejects and window_end_ms(table["TS"].to_numpy(), 60)[0] == expected
