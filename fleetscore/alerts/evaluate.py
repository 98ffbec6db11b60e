"""Which alerts an hour raises: pure functions of its predictions (and the previous hour's last
windows), the rules, and the hour's run status. No I/O: ``alerts.records`` stores them.

An anomaly episode of a sensor starts at the window where at least ``min_windows`` of its last
``of_last`` windows are anomalous for the first time (the previous hour's last windows count,
so an episode across the hour boundary is one episode) and lasts while that holds. It is
named by its first anomalous window: a rerun of the hour, or the next hour, names the same
episode the same way, which is what makes an alert's key (rule, group, first window) stable.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from fleetscore.alerts.rules import Rule, Rules


@dataclass(frozen=True)
class Candidate:
    """An alert an hour raises, before the store says whether it is new, or snoozed."""

    rule: str
    on: str
    severity: str
    group: str  # a device, a sensor (Device/Tag) or "run"
    first_window: str  # "YYYY-MM-DD HH:MM:SS", the predictions' TS; for runs the hour
    last_window: str
    device: str = ""
    tags: tuple[str, ...] = ()
    windows: int = 0  # anomalous windows in the episode (so far)
    score: float | None = None  # the lowest decision among them: the most anomalous
    detail: str = ""


@dataclass(frozen=True)
class _Episode:
    device: str
    tag: str
    first: str
    last: str
    windows: int
    score: float | None


def anomaly_candidates(rules: Rules, hour_rows: pa.Table, previous_rows: pa.Table | None
                       ) -> list[Candidate]:
    """Every anomaly rule's alerts for the hour, grouped as each rule says."""
    out: list[Candidate] = []
    watching = rules.watching("anomaly")
    if not watching or hour_rows.num_rows == 0:
        return out
    hot = _sensors_with_anomalies(hour_rows)
    if not hot:
        return out
    series = _series(hour_rows, hot)
    tails = _series(previous_rows, hot) if previous_rows is not None else {}
    for rule in watching:
        episodes = [e for (device, tag), rows in series.items() if rule.selects(device, tag)
                    for e in _episodes(rule, tails.get((device, tag)), rows, device, tag)]
        out.extend(_grouped(rule, episodes))
    return out


def run_candidates(rules: Rules, hour: str, status: str, reason: str) -> list[Candidate]:
    """An hour that ended ``failed`` or ``partial``."""
    if status not in ("failed", "partial"):
        return []
    return [Candidate(r.name, r.on, r.severity, "run", hour, hour, detail=f"{status}: {reason}")
            for r in rules.watching("run_failed")]


def silent_candidates(rules: Rules, hour: str, silent: Iterable[tuple[str, str]]
                      ) -> list[Candidate]:
    """Sensors the previous hour's arrivals had and this hour's do not."""
    silent = sorted(set(silent))
    out = []
    for rule in rules.watching("sensor_silent"):
        groups: dict[str, list[tuple[str, str]]] = defaultdict(list)
        for device, tag in silent:
            if rule.selects(device, tag):
                groups[rule.group_of(device, tag)].append((device, tag))
        for group, members in sorted(groups.items()):
            out.append(Candidate(rule.name, rule.on, rule.severity, group, hour, hour,
                                 device=members[0][0], tags=tuple(t for _, t in members),
                                 detail=f"{len(members)} sensor(s) sent nothing this hour"))
    return out


def _sensors_with_anomalies(rows: pa.Table) -> set[tuple[str, str]]:
    flagged = rows.filter(pc.equal(rows["Prediction"], 1)).select(["Device", "Tag"])
    return set(zip(flagged["Device"].to_pylist(), flagged["Tag"].to_pylist(), strict=True))


def _series(rows: pa.Table, sensors: set[tuple[str, str]]
            ) -> dict[tuple[str, str], tuple[list[str], np.ndarray, np.ndarray]]:
    """(window labels, labels, scores) of each of ``sensors`` in time order."""
    keys = pa.array([f"{d}/{t}" for d, t in sorted(sensors)], pa.string())
    mine = rows.filter(pc.is_in(pc.binary_join_element_wise(rows["Device"], rows["Tag"], "/"),
                                value_set=keys))
    mine = mine.sort_by([("Device", "ascending"), ("Tag", "ascending"), ("TS", "ascending")])
    out: dict[tuple[str, str], tuple[list[str], np.ndarray, np.ndarray]] = {}
    devices, tags = mine["Device"].to_pylist(), mine["Tag"].to_pylist()
    ts = mine["TS"].to_pylist()
    labels = mine["Prediction"].to_numpy(zero_copy_only=False).astype(np.int64)
    scores = mine["Score"].to_numpy(zero_copy_only=False).astype(np.float64)
    start = 0
    for end in range(1, len(ts) + 1):
        if end == len(ts) or (devices[end], tags[end]) != (devices[start], tags[start]):
            out[(devices[start], tags[start])] = (ts[start:end], labels[start:end],
                                                  scores[start:end])
            start = end
    return out


def _episodes(rule: Rule, tail, rows, device: str, tag: str) -> list[_Episode]:
    """The episodes that start in this hour (their firing window is one of its windows)."""
    ts, labels, scores = rows
    k, n = rule.min_windows, rule.of_last
    if tail is not None:  # the previous hour's last windows: enough to know its last count
        t_ts, t_labels, t_scores = (tail[0][-2 * n:], tail[1][-2 * n:], tail[2][-2 * n:])
        ts, labels = list(t_ts) + list(ts), np.concatenate([t_labels, labels])
        scores = np.concatenate([t_scores, scores])
        first_here = len(t_ts)
    else:
        first_here = 0
    counts = np.convolve(labels, np.ones(n, dtype=np.int64))[: len(labels)]
    firing = counts >= k
    episodes = []
    i = first_here
    while i < len(labels):
        if firing[i] and (i == 0 or not firing[i - 1]):
            j = i
            while j + 1 < len(labels) and firing[j + 1]:
                j += 1
            span = np.flatnonzero(labels[max(0, i - n + 1): j + 1]) + max(0, i - n + 1)
            flagged = scores[span]
            flagged = flagged[np.isfinite(flagged)]
            episodes.append(_Episode(device, tag, ts[span[0]], ts[span[-1]], len(span),
                                     float(flagged.min()) if len(flagged) else None))
            i = j + 1
        else:
            i += 1
    return episodes


def _grouped(rule: Rule, episodes: Sequence[_Episode]) -> list[Candidate]:
    groups: dict[str, list[_Episode]] = defaultdict(list)
    for e in episodes:
        groups[rule.group_of(e.device, e.tag)].append(e)
    out = []
    for group, members in sorted(groups.items()):
        scores = [e.score for e in members if e.score is not None]
        out.append(Candidate(
            rule.name, rule.on, rule.severity, group,
            first_window=min(e.first for e in members), last_window=max(e.last for e in members),
            device=members[0].device, tags=tuple(sorted({e.tag for e in members})),
            windows=sum(e.windows for e in members), score=min(scores) if scores else None))
    return out
