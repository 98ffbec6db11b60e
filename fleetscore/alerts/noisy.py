"""The runaway-sensor guard: pure functions that say which sensors are noisy.

A sensor is noisy in an hour when its model flags at least ``hour_share`` of the hour's points,
or at least ``day_share`` of the last 24 hours' points (this hour and the 23 before), each over
at least ``min_points`` points. A noisy sensor's flags say its model no longer describes it,
not that it has 30 incidents: it raises one ``noisy_sensor`` alert while it stays noisy, named
by the hour its streak of noisy hours began, and its anomaly alerts are held back meanwhile.

The rolling day is exact and cheap. A sensor under the day threshold in every hour of the day
is under it for the day, so only sensors that reached it in some hour can be noisy by the day.
Each run manifest lists those, with their counts (``flag_counts``): in a healthy fleet, none.
Their counts for the day's other hours are read from those hours' predictions (filtered to
them), and only then: a sensor noisy every hour needs no read at all. Reading the 23 hours'
predictions for every sensor (exact too) would read the fleet's whole day at every close; the
manifests listing every sensor's counts would make each a fleet-sized file that ``runs`` reads.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence

import pyarrow as pa
import pyarrow.compute as pc

from fleetscore.alerts.evaluate import Candidate
from fleetscore.alerts.rules import NoisySettings, Rules
from fleetscore.contracts import NoisySensor, SensorFlags

DAY_HOURS = 24
Counts = dict[str, tuple[int, int]]  # "Device/Tag" -> (flagged points, points)


def hour_counts(rows: pa.Table | None, only: Iterable[str] | None = None) -> Counts:
    """Each sensor's flagged points and points in ``rows`` (an hour's predictions);
    ``only``: just these sensors."""
    if rows is None or rows.num_rows == 0:
        return {}
    keys = pc.binary_join_element_wise(rows["Device"], rows["Tag"], "/")
    flagged = pc.cast(pc.equal(rows["Prediction"], 1), pa.int64())
    table = pa.table({"sensor": keys, "flagged": flagged})
    if only is not None:
        table = table.filter(pc.is_in(table["sensor"],
                                      value_set=pa.array(sorted(only), pa.string())))
    sums = table.group_by("sensor").aggregate([("flagged", "sum"), ("flagged", "count")])
    return {s: (int(f), int(n)) for s, f, n in zip(
        sums["sensor"].to_pylist(), sums["flagged_sum"].to_pylist(),
        sums["flagged_count"].to_pylist(), strict=True)}


def _listed(settings: NoisySettings) -> float:
    # An hour lists every sensor that reached the lower threshold, so a sensor noisy by the
    # hour is always a candidate of the day, whichever threshold is set lower.
    return min(settings.hour_share, settings.day_share)


def hot(counts: Mapping[str, tuple[int, int]], settings: NoisySettings) -> tuple[SensorFlags, ...]:
    """What a manifest lists: the hour's sensors whose share reached a threshold."""
    bar = _listed(settings)
    return tuple(SensorFlags(s, f, n) for s, (f, n) in sorted(counts.items())
                 if n and f >= bar * n)


def day_candidates(current: Mapping[str, tuple[int, int]],
                   earlier: Iterable[Sequence[SensorFlags]], settings: NoisySettings) -> set[str]:
    """The sensors that can be noisy by the day: listed this hour or in an earlier one."""
    out = {f.sensor for f in hot(current, settings)}
    for listed in earlier:
        out.update(f.sensor for f in listed)
    return out


def missing(listed: Sequence[SensorFlags] | None, candidates: set[str]) -> bool:
    """An earlier hour whose predictions must be read: its manifest does not list every
    candidate (an unlisted one was under the bar there, but its counts still count) or is of a
    version that listed nothing."""
    return listed is None or not candidates <= {f.sensor for f in listed}


def add(totals: Counts, counts: Mapping[str, tuple[int, int]], only: set[str]) -> None:
    for sensor in only & counts.keys():
        f, n = counts[sensor]
        was_f, was_n = totals.get(sensor, (0, 0))
        totals[sensor] = (was_f + f, was_n + n)


def judge(hour: str, current: Mapping[str, tuple[int, int]], day: Mapping[str, tuple[int, int]],
          settings: NoisySettings, streaks: Mapping[str, str]) -> tuple[NoisySensor, ...]:
    """The hour's noisy sensors (only sensors scored this hour are judged). ``day``: the
    day's totals of the candidates, this hour included; ``streaks``: the previous hour's
    noisy sensors and the hour each one's streak began."""
    out = []
    for sensor, (flagged, points) in sorted(current.items()):
        day_flagged, day_points = day.get(sensor, (flagged, points))
        hour_share = flagged / points if points else 0.0
        day_share = day_flagged / day_points if day_points else 0.0
        by_hour = points >= settings.min_points and hour_share >= settings.hour_share
        by_day = day_points >= settings.min_points and day_share >= settings.day_share
        if by_hour or by_day:
            out.append(NoisySensor(sensor, round(hour_share, 4), round(day_share, 4), flagged,
                                   points, streaks.get(sensor, hour)))
    return tuple(out)


def held_back(rules: Rules, noisy: Iterable[NoisySensor]) -> set[str]:
    """Noisy sensors whose anomaly alerts are held back: those a ``noisy_sensor`` rule
    hears of (without one, nobody would hear of them at all)."""
    watching = rules.watching("noisy_sensor")
    return {n.sensor for n in noisy
            if any(r.selects(*n.sensor.split("/", 1)) for r in watching)}


def noisy_candidates(rules: Rules, hour: str, noisy: Sequence[NoisySensor]) -> list[Candidate]:
    """One alert per group while it stays noisy: named by the hour its streak began, so
    every hour of the streak raises the same key and finds it recorded."""
    out = []
    for rule in rules.watching("noisy_sensor"):
        groups: dict[str, list[NoisySensor]] = defaultdict(list)
        for n in noisy:
            device, tag = n.sensor.split("/", 1)
            if rule.selects(device, tag):
                groups[rule.group_of(device, tag)].append(n)
        for group, members in sorted(groups.items()):
            out.append(Candidate(
                rule.name, rule.on, rule.severity, group,
                first_window=min(n.since for n in members), last_window=hour,
                device=members[0].sensor.split("/", 1)[0],
                tags=tuple(sorted(n.sensor.split("/", 1)[1] for n in members)),
                windows=sum(n.flagged for n in members), detail=_detail(members)))
    return out


def _detail(members: Sequence[NoisySensor]) -> str:
    said = "; ".join(f"{n.sensor} flagged {n.hour_share:.0%} of the hour's points "
                     f"({n.flagged} of {n.points}), {n.day_share:.0%} of the day's, noisy "
                     f"since {n.since}" for n in members[:5])
    more = f" (and {len(members) - 5} more)" if len(members) > 5 else ""
    return (f"{said}{more}: its model flags too much to be believed; its per-window anomaly "
            "alerts are held back while it stays noisy (retrain it, or check the sensor)")
