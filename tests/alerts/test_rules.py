"""The rules file: what it means, and a bad field named in one line with nothing stored."""

from __future__ import annotations

from datetime import timedelta

import pytest

from fleetscore.alerts.records import apply_rules, load_rules
from fleetscore.alerts.rules import RULES_PATH, RulesError, parse_rules

GOOD = """
[[rule]]
name = "sustained"
sensors = ["D1/*", "*/temp"]
min_windows = 3
of_last = 5
group_by = "device"
snooze = "6h"
severity = "warning"
sinks = ["ops", "teams"]

[[rule]]
name = "bad-hours"
on = "run_failed"
sinks = ["ops"]

[sink.ops]
type = "webhook"
url = "https://example.org/hook"

[sink.teams]
type = "webhook"
url = "https://example.org/teams"
format = "teams"
timeout = "5s"
"""


def test_a_good_file_means_what_it_says():
    rules = parse_rules(GOOD)
    sustained = rules.rule("sustained")
    assert (sustained.min_windows, sustained.of_last, sustained.snooze) == (3, 5, timedelta(hours=6))
    assert sustained.selects("D1", "flow") and sustained.selects("D9", "temp")
    assert not sustained.selects("D9", "flow")
    assert sustained.group_of("D1", "flow") == "D1"
    assert [r.name for r in rules.watching("run_failed")] == ["bad-hours"]
    assert rules.sinks["teams"].format == "teams" and rules.sinks["teams"].timeout_s == 5


@pytest.mark.parametrize("change, named", [
    (("min_windows = 3", "min_windows = 7"), "rule 'sustained'.min_windows: 7 must be between"),
    (("min_windows = 3", 'min_windows = "3"'), "rule 'sustained'.min_windows: '3' is not an integer"),
    (("of_last = 5", "of_last = 0"), "rule 'sustained'.of_last: 0 must be between 1 and 60"),
    (('group_by = "device"', 'group_by = "site"'), "rule 'sustained'.group_by: 'site' is not one of"),
    (('snooze = "6h"', 'snooze = "six hours"'), "rule 'sustained'.snooze: 'six hours' is not a duration"),
    (('severity = "warning"', 'severity = "loud"'), "rule 'sustained'.severity: 'loud'"),
    (('sinks = ["ops", "teams"]', 'sinks = ["pager"]'), "rule 'sustained'.sinks: no [sink.pager]"),
    (('sensors = ["D1/*", "*/temp"]', 'sensors = "D1 temp"'), "rule 'sustained'.sensors"),
    (('severity = "warning"', 'severty = "warning"'), "rule[0].severty: unknown field"),
    (('on = "run_failed"', 'on = "moon"'), "rule 'bad-hours'.on: 'moon' is not one of"),
    (('url = "https://example.org/hook"', 'url = "ftp://x"'),
     "sink.ops.url: 'ftp://x' is not an http(s) URL"),
    (('format = "teams"', 'format = "fax"'), "sink.teams.format: 'fax' is not one of"),
    (('timeout = "5s"', 'timeout = "10m"'), "sink.teams.timeout: must be between"),
    (('name = "bad-hours"', 'name = "sustained"'), "rule name 'sustained' is used twice"),
    (("[[rule]]\nname = \"sustained\"", "[[rule]]\nname = \"has space\""), "rule[0].name"),
    (("[sink.ops]", "[sinks.ops]"), "unknown table 'sinks'"),
    (("[[rule]]", "[[rule]"), "not TOML"),
])
def test_a_bad_field_is_named_in_one_line_and_nothing_is_stored(local_store, change, named):
    old, new = change
    assert old in GOOD
    with pytest.raises(RulesError) as caught:
        apply_rules(local_store, GOOD.replace(old, new, 1), "rules.toml")
    message = str(caught.value)
    assert named in message and "\n" not in message and message.startswith("rules.toml: ")
    assert not local_store.exists(RULES_PATH) and load_rules(local_store) is None


def test_applied_rules_are_the_stored_ones(local_store):
    apply_rules(local_store, GOOD, "rules.toml")
    assert load_rules(local_store) == parse_rules(GOOD, "alerts/rules.toml")
