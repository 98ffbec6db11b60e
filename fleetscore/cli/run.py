"""``fleetscore plan``, ``run`` and ``runs``: an hour's plan, scoring hours, and how their runs
went."""

from __future__ import annotations

import json
import sys
from typing import Annotated

import typer
from rich.table import Table

from fleetscore.cli.common import (
    ProgressBar,
    StoreOpt,
    WindowOpt,
    err,
    load_settings,
    open_store,
    out,
    plural,
)
from fleetscore.contracts import RunManifest
from fleetscore.core.hours import Hour, hour_range
from fleetscore.core.text import count
from fleetscore.errors import UsageError

ROWS_SHOWN = 50  # a backfill's summary: the first rows, then totals


# --- plan -----------------------------------------------------------------------------------


def plan(
    store: StoreOpt = None,
    window: WindowOpt = None,
    unit_size: Annotated[int | None, typer.Option(help="Sensors per unit (default: automatic).")] = None,
    save: Annotated[bool, typer.Option(
        "--save", help="Store the plan under a new run id, for `python -m scoring_container "
        "--run ID`.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the plan as JSON.")] = False,
) -> None:
    """Plan an hour: which sensors are scored, in which units, and who is left out.

    A dry run: nothing is stored unless --save, which stores the plan under a new run id so
    that `python -m scoring_container --run ID --unit U` can score a unit into that run's
    staging (runs/HOUR/ID/). Staged predictions become the hour's predictions only when a run
    finalizes (`fleetscore run`, or the Functions app)."""
    from datetime import UTC, datetime

    from fleetscore.runs.lifecycle import new_run_id
    from fleetscore.scoring.planning import make_plan, save_plan

    if window is None:
        raise UsageError("missing --window YYYY-MM-DDTHH")
    hour = Hour.parse(window)
    settings = load_settings()
    st = open_store(store, settings)
    run_id = None
    try:
        p = make_plan(st, hour, unit_size=unit_size)
        if save:
            run_id = new_run_id(datetime.now(UTC))
            save_plan(st, p, run_id)
    finally:
        st.close()
    if as_json:
        sys.stdout.write(json.dumps({**p.to_json(), "run_id": run_id}, indent=1) + "\n")
        return
    _print_plan(p, hour, run_id)


def _print_plan(p, hour: Hour, run_id: str | None) -> None:
    saved = f"saved as run {run_id}" if run_id else "not saved: --save stores it"
    out.print(f"plan for {hour}: {p.sensors:,} {plural(p.sensors, 'sensor')} in "
              f"{len(p.units):,} {plural(len(p.units), 'unit')} of up to {p.unit_size:,} ({saved})")
    for unit in p.units[:20]:
        out.print(f"  {unit.id}: {', '.join(map(str, unit.sensors[:8]))}"
                  + (" ..." if len(unit.sensors) > 8 else ""))
    if len(p.units) > 20:
        out.print(f"  ... and {len(p.units) - 20:,} more units")
    if p.no_data:
        out.print(f"left out, no data: {', '.join(map(str, p.no_data[:20]))}"
                  + (f" ... ({len(p.no_data):,})" if len(p.no_data) > 20 else ""))
    if p.no_model:
        out.print(f"left out, no model: {', '.join(map(str, p.no_model[:20]))}"
                  + (f" ... ({len(p.no_model):,})" if len(p.no_model) > 20 else ""))


# --- run ------------------------------------------------------------------------------------


def run(
    store: StoreOpt = None,
    window: WindowOpt = None,
    from_: Annotated[str | None, typer.Option("--from", help="First hour of a range.")] = None,
    to: Annotated[str | None, typer.Option("--to", help="Last hour of a range (inclusive).")] = None,
    all_: Annotated[bool, typer.Option("--all", help="Every hour that has data.")] = False,
    sensors: Annotated[list[str] | None, typer.Option(
        "--sensors", metavar="DEVICE/TAG",
        help="Rerun only these sensors (DEVICE/TAG; repeat the option); the "
        "hour's other predictions stay.")] = None,
    force: Annotated[bool, typer.Option(
        "--force", help="Rerun hours whose last run succeeded.")] = False,
    missing: Annotated[bool, typer.Option(
        "--missing", help="Only hours of the range with no successful run (what a range does "
        "unless --force).")] = False,
    workers: Annotated[int | None, typer.Option(help="Worker processes (default: cores).")] = None,
    unit_size: Annotated[int | None, typer.Option(help="Sensors per unit (default: automatic).")] = None,
    backend: Annotated[str | None, typer.Option(help="local (process pool), sequential or batch.")] = None,
    fmt: Annotated[str | None, typer.Option(
        "--format", metavar="csv|parquet", help="Predictions files: csv (the reference's "
        "format, default) or parquet (same columns).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the runs as JSON.")] = False,
    max_failed_percent: Annotated[float | None, typer.Option(
        "--max-failed-percent", metavar="P", min=0, max=100,
        help="Fail an hour whole when more than P% of its sensors fail: its units not yet "
        "done are cancelled and its visible predictions stay as they were.")] = None,
) -> None:
    """Score one hour, a range of hours, or every hour with data.

    A range skips hours whose last run succeeded, so an interrupted backfill resumes where it
    stopped; --force reruns them. One hour that already succeeded is refused without --force,
    as the HTTP API does. Hours that have not ended are refused."""
    from datetime import UTC, datetime

    from fleetscore.compute import load_backend
    from fleetscore.core.sensors import Sensor
    from fleetscore.runs.engine import ENGINE

    _check_run_options(window, from_, to, all_, workers=workers, force=force, missing=missing)
    picked = sorted({Sensor.parse(s) for s in sensors}) if sensors else None
    settings = load_settings()
    now = datetime.now(UTC)
    st = open_store(store, settings)
    try:
        hours = _chosen_hours(st, window, from_, to, all_, now=now)
        done = _done_hours(st, hours, window=window, force=force)
        todo = [h for h in hours if h not in done]
        if from_:  # --all chose hours with data already
            todo = _drop_empty_hours(st, todo, now=now)
        be = load_backend(backend or settings.backend, st, store_spec=store or settings.store,
                          settings=settings, workers=workers or settings.workers, engine=ENGINE)
        options = dict(sensors=picked, unit_size=unit_size, deadline=settings.deadline,
                       ttl=settings.lock_ttl, fmt=fmt or settings.predictions_format,
                       max_failed_percent=max_failed_percent if max_failed_percent is not None
                       else settings.max_failed_percent)
        summaries, not_run = _score_on(st, be, hours if window else todo, single=bool(window),
                                       options=options, since=now)
        delivered = _deliver_alerts(st, quiet=as_json)
    finally:
        st.close()
    worst = _report_runs(summaries, not_run, done, as_json=as_json)
    if delivered:
        out.print(delivered, markup=False)
    if worst:
        raise typer.Exit(worst)


def _score_on(st, be, hours, *, single: bool, options: dict, since):
    """``_score_hours`` on the backend, which is closed after; Ctrl-C says which hours
    finished."""
    try:
        return _score_hours(st, be, hours, single=single, options=options)
    except KeyboardInterrupt:
        be.close()
        _say_interrupted(st, hours, since=since)
        raise
    finally:
        be.close()


def _deliver_alerts(st, *, quiet: bool) -> str:
    """Send what the runs raised (and what failing sinks are still owed); a line saying so,
    or "" when there are no rules. A sink's failure never changes the run's exit code."""
    from datetime import UTC, datetime

    from fleetscore.alerts.records import load_rules
    from fleetscore.errors import FleetscoreError
    from fleetscore.runs.alerting import deliver_owed

    try:
        rules = load_rules(st)
        if rules is None:
            return ""
        report = deliver_owed(st, rules, now=datetime.now(UTC),
                              deadline=load_settings().deadline, store_url=st.url)
    except FleetscoreError as exc:
        return f"alerts not delivered: {exc}"
    if quiet or not (report.sent or report.failed):
        return ""
    return (f"alerts: {report.sent} sent" + (f", {report.failed} failed (tried again at the next "
            "run or by fleetscore alerts deliver)" if report.failed else ""))


def _check_run_options(window, from_, to, all_, *, workers, force, missing) -> None:
    chosen = sum(x is not None and x is not False for x in (window, from_ or to, all_ or None))
    if chosen != 1:
        raise UsageError("choose one of --window HOUR, --from HOUR --to HOUR, or --all")
    if workers is not None and workers < 1:
        raise UsageError(f"invalid --workers {workers}: expected 1 or more")
    if missing and force:
        raise UsageError("--missing and --force contradict each other")
    if missing and window:
        raise UsageError("--missing goes with a range (--from/--to or --all)")


def _chosen_hours(st, window, from_, to, all_, *, now) -> list[Hour]:
    """The hours the options name, every one of them ended."""
    from fleetscore.data.arrivals import hours_with_arrivals
    from fleetscore.runs.lifecycle import check_ended

    if window:
        hours = [Hour.parse(window)]
        check_ended(hours[0], now)
    elif all_:
        hours = [h for h in hours_with_arrivals(st) if h.end_ms <= now.timestamp() * 1000]
        if not hours:
            raise UsageError(f"the store {st.url} has no data: run `fleetscore ingest` first")
    else:
        if not (from_ and to):
            raise UsageError("--from and --to go together")
        hours = hour_range(Hour.parse(from_), Hour.parse(to))
        check_ended(hours[-1], now)
    return hours


def _scored_with_current_models(manifest: RunManifest | None, newest_model: str | None) -> bool:
    from fleetscore.runs.table import scored_before

    return manifest is not None and manifest.status == "succeeded" \
        and not scored_before(manifest.started_at, newest_model)


def _done_hours(st, hours: list[Hour], *, window, force) -> set[Hour]:
    """Hours whose last run succeeded with the current models (it began after the newest model
    was saved): a range skips them, so a backfill resumes and a retrain reruns everything."""
    from fleetscore.model.bank import newest_champion_time
    from fleetscore.runs.lifecycle import readable_manifest

    newest = None if (force or window) else newest_champion_time(st)
    done = set() if force else {
        h for h in hours if _scored_with_current_models(readable_manifest(st, h), newest)}
    if window and done:
        raise UsageError(f"{window} has already been scored (succeeded): pass --force to "
                         "rerun it")
    if done:
        err.print(f"skipped {len(done):,} {plural(len(done), 'hour')} whose last run "
                  "succeeded with the current models (--force reruns them)")
    return done


def _drop_empty_hours(st, hours: list[Hour], *, now) -> list[Hour]:
    """A range's hours that have data, or an earlier run to replace. Hours with neither are
    never run (no manifest is written for them), and the user is told before anything runs;
    a range with no data at all is nothing to score (exit 6)."""
    from fleetscore.data.arrivals import hours_with_arrivals
    from fleetscore.runs.lifecycle import manifest_paths

    with_data = set(hours_with_arrivals(st))
    with_manifest = {p[len("runs/"): -len(".json")] for p in manifest_paths(st)}
    empty = [h for h in hours if h not in with_data and str(h) not in with_manifest]
    if not empty:
        return hours
    span = (f"the store's data spans {min(with_data)} .. {max(with_data)}" if with_data
            else "the store has no data")
    if len(empty) == len(hours):
        err.print(f"nothing to score: no hour of {hours[0]} .. {hours[-1]} has data ({span})",
                  markup=False)
        raise typer.Exit(6)
    err.print(f"skipped {len(empty):,} {plural(len(empty), 'hour')} with no data and no earlier "
              f"run ({span}); no manifest is written for them", markup=False)
    return [h for h in hours if h not in set(empty)]


def _score_hours(st, be, hours: list[Hour], *, single: bool, options: dict):
    """(summaries, hours not run): one hour as its own run, or a range in spans."""
    from fleetscore.runs.lifecycle import run_hour
    from fleetscore.runs.ranges import run_range

    if single:
        with ProgressBar(f"scoring {hours[0]}") as progress:
            return [run_hour(st, hours[0], be, progress=progress, **options)], ()
    if not hours:
        return [], ()
    with ProgressBar(f"scoring {len(hours):,} {plural(len(hours), 'hour')}") as progress:
        ranged = run_range(st, hours, be, progress=progress, **options)
    return list(ranged.summaries), ranged.not_run


def _say_interrupted(st, hours: list[Hour], *, since) -> None:
    """What an interrupted run finished (a manifest written since it began) and what not."""
    from fleetscore.runs.lifecycle import readable_manifest

    began = since.isoformat(timespec="microseconds")
    finished = [h for h in hours
                if (m := readable_manifest(st, h)) is not None and m.started_at >= began]
    rest = [h for h in hours if h not in set(finished)]
    names = ", ".join(str(h) for h in rest[:5]) + (" ..." if len(rest) > 5 else "")
    err.print(f"interrupted: {len(finished):,} of {count(len(hours), 'hour')} finished; "
              f"not finished: {names or 'none'} (their earlier predictions are unchanged; run "
              "the range again to finish them, it skips what succeeded)", markup=False)


def _report_runs(summaries, not_run, done, *, as_json: bool) -> int:
    """Print what the runs did; the command's exit code (docs/reliability.md)."""
    from fleetscore.runs.ranges import not_run_exit_code

    if as_json:
        sys.stdout.write(json.dumps({
            "runs": [s.to_json() for s in summaries], "skipped": sorted(str(h) for h in done),
            "not_run": [{"window": h, "kind": k, "error": m} for h, k, m in not_run]},
            indent=1) + "\n")
    elif summaries:
        _print_runs(summaries)
    codes = {s.exit_code for s in summaries}
    worst = 3 if 3 in codes else (6 if 6 in codes else 0)
    if worst == 3 and not as_json:
        _say_failures([f for s in summaries for f in s.failures])
    if worst == 6 and not as_json:
        _say_no_data(summaries)
    if not_run:
        if not as_json:
            err.print(f"{len(not_run):,} {plural(len(not_run), 'hour')} not run: "
                      f"{not_run[0][2]}{' ...' if len(not_run) > 1 else ''}")
        worst = not_run_exit_code(not_run)
    return worst


def _say_failures(failed: list[dict]) -> None:
    names = ", ".join(sorted({f["sensor"] for f in failed})[:10])
    err.print(f"{len(failed):,} sensor {plural(len(failed), 'failure')} ({names}"
              f"{' ...' if len(failed) > 10 else ''}); the others are written. Details in "
              "the run manifests.", markup=False)
    if failed:
        first = failed[0]
        err.print(f"first: {first['sensor']}: {first['kind']}: {first['message']}",
                  markup=False, soft_wrap=True)


def _say_no_data(summaries) -> None:
    empty = [s.window for s in summaries if s.status == "no_data"]
    modelless = max((s.no_model for s in summaries if s.status == "no_data"), default=0)
    why = (f" ({modelless:,} {plural(modelless, 'sensor')} with data but no model: "
           "`fleetscore train` or `fleetscore models import` first)" if modelless else "")
    err.print(f"nothing to score in {len(empty):,} {plural(len(empty), 'hour')} "
              f"({', '.join(empty[:5])}{' ...' if len(empty) > 5 else ''}): no sensor has "
              f"both data and a model there{why}")


def _print_runs(summaries) -> None:
    table = Table("window", "status", "planned", "scored", "failed", "no data", "no model",
                  "anomalies", "seconds", show_footer=len(summaries) > 1)
    for s in summaries[:ROWS_SHOWN]:
        table.add_row(s.window, _status_cell(s.status), f"{s.planned:,}", f"{s.scored:,}",
                      f"{s.failed:,}", f"{s.no_data:,}", f"{s.no_model:,}", f"{s.anomalies:,}",
                      f"{s.duration_s:.2f}")
    if len(summaries) > ROWS_SHOWN:
        table.add_row(f"... {len(summaries) - ROWS_SHOWN:,} more", "", "", "", "", "", "", "", "")
    if len(summaries) > 1:
        _add_totals(table, summaries)
    out.print(table)
    shown = 0
    for s in summaries:
        for f in s.failures[:10]:
            if shown == 20:
                break
            err.print(f"  {s.window} {f['sensor']}: {f['kind']}: {f['message']}")
            shown += 1
        for sensor in s.kept_from_earlier_run[:10]:
            err.print(f"  {s.window} {sensor}: kept its predictions from an earlier run")


def _add_totals(table: Table, summaries) -> None:
    """The footer of a range's table: every hour counted, the rows shown or not."""
    counts: dict[str, int] = {}
    for s in summaries:
        counts[s.status] = counts.get(s.status, 0) + 1
    columns = table.columns
    columns[0].footer = f"{len(summaries):,} hours"
    columns[1].footer = ", ".join(f"{n:,} {k}" for k, n in sorted(counts.items()))
    for col, field in zip(columns[2:8], ("planned", "scored", "failed", "no_data",
                                          "no_model", "anomalies"), strict=True):
        col.footer = f"{sum(getattr(s, field) for s in summaries):,}"
    columns[8].footer = f"{sum(s.duration_s for s in summaries):.2f}"


def _status_cell(status: str) -> str:
    color = {"succeeded": "green", "partial": "yellow", "no_data": "blue",
             "never_run": "dim"}.get(status, "red")
    return f"[{color}]{status}[/]"


# --- runs -----------------------------------------------------------------------------------


def runs_list(
    store: StoreOpt = None,
    from_: Annotated[str | None, typer.Option("--from", help="First hour (default: the first "
                                              "hour with data or a run).")] = None,
    to: Annotated[str | None, typer.Option("--to", help="Last hour (default: the last hour with "
                                           "data or a run).")] = None,
    status: Annotated[str | None, typer.Option(
        help="Only hours with this status: succeeded, partial, failed, no_data, never_run, "
        "damaged.")] = None,
    stale: Annotated[bool, typer.Option(
        "--stale", help="Only hours scored by a champion that is no longer current (a range "
        "rerun without --force reruns them).")] = False,
    limit: Annotated[int, typer.Option(help="Lines shown at most (totals follow).")] = 200,
    as_json: Annotated[bool, typer.Option("--json", help="Print every hour as JSON.")] = False,
) -> None:
    """The hours of a range and how their runs went, including hours never run, and which
    were scored by a champion that is no longer current (stale)."""
    from fleetscore.runs.table import STATUSES, hour_rows

    if status is not None and status not in STATUSES:
        raise UsageError(f"invalid --status {status!r}: expected one of {', '.join(STATUSES)}")
    settings = load_settings()
    st = open_store(store, settings)
    try:
        rows = hour_rows(st, first=Hour.parse(from_) if from_ else None,
                         last=Hour.parse(to) if to else None)
    finally:
        st.close()
    if status is not None:
        rows = [r for r in rows if r.status == status]
    if stale:
        rows = [r for r in rows if r.stale]
    if as_json:
        sys.stdout.write(json.dumps({"hours": [r.to_json() for r in rows]}, indent=1) + "\n")
    else:
        _print_hours(rows, limit)
    if any(r.status == "damaged" for r in rows):
        raise typer.Exit(3)


def _print_hours(rows, limit: int) -> None:
    table = Table("window", "status", "scored", "failed", "anomalies", "noisy", "finished",
                  "run id", "models")
    for r in rows[:limit]:
        table.add_row(r.window, _status_cell(r.status), _count(r.scored), _count(r.failed),
                      _count(r.anomalies), _noisy_cell(r.noisy), r.finished or "",
                      r.run_id or "", "[yellow]stale[/]" if r.stale else "")
    out.print(table)
    counts: dict[str, int] = {}
    for r in rows:
        counts[r.status] = counts.get(r.status, 0) + 1
    more = f" ({len(rows) - limit:,} not shown: --limit, --status or --json)" if len(rows) > limit else ""
    out.print(f"{len(rows):,} {plural(len(rows), 'hour')}: "
              + (", ".join(f"{n:,} {k}" for k, n in sorted(counts.items())) or "none") + more)
    stale = sum(bool(r.stale) for r in rows)
    if stale:
        out.print(f"{stale:,} {plural(stale, 'hour')} scored by a champion that is no longer "
                  "current: `fleetscore run --from H --to H` (without --force) reruns them")
    damaged = [r.window for r in rows if r.status == "damaged"]
    for window in damaged[:10]:
        err.print(f"runs/{window}.json is damaged: `fleetscore run --window {window} --force` "
                  "rewrites it (`fleetscore verify` names every damaged object)", markup=False)


def _noisy_cell(noisy: tuple[str, ...] | None) -> str:
    """How many sensors the runaway guard marked (``--json`` names them)."""
    return f"[yellow]{len(noisy):,}[/]" if noisy else ""


def _count(n: int | None) -> str:
    return "" if n is None else f"{n:,}"
