"""``fleetscore ingest`` and ``fleetscore replay``: readings into the store, or to Event Hubs."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer

from fleetscore.cli.common import (
    ProgressBar,
    StoreOpt,
    discard_if_empty,
    err,
    load_settings,
    new_local_store_dir,
    open_store,
    out,
)
from fleetscore.core.text import count
from fleetscore.errors import UsageError


def ingest(
    readings: Annotated[list[Path], typer.Argument(help="Readings CSV files: TS,Device,Tag,Value.")],
    store: StoreOpt = None,
    interval: Annotated[int, typer.Option(help="Window length in seconds.")] = 60,
) -> None:
    """Aggregate readings into windows and record their arrival (the local Stream Analytics)."""
    from fleetscore.data.ingest import ingest_file

    # Every file is looked for before any is ingested: exit 2 means nothing was done.
    missing = [str(p) for p in readings if not p.is_file()]
    if missing:
        raise UsageError(f"no such readings file: {', '.join(missing)}")
    settings = load_settings()
    new_dir = new_local_store_dir(store or settings.store)
    st = open_store(store, settings, create=True)
    partial = False
    try:
        for i, path in enumerate(readings):
            label = f"ingesting {path.name}" + (f" ({i + 1} of {len(readings)})" if len(readings) > 1 else "")
            with ProgressBar(label) as progress:
                result = ingest_file(st, path, interval_s=interval, progress=progress)
            _say_ingested(path, result, st.url)
            partial = partial or bool(result.rejected)
    finally:
        discard_if_empty(new_dir, st)  # only bookkeeping there: a failed first ingest
        st.close()
    if partial:
        raise typer.Exit(3)


def _say_ingested(path: Path, result, store_url: str) -> None:
    out.print(
        f"{path}: {count(result.rows, 'row')} -> {count(result.windows, 'window')} of "
        f"{count(result.sensors, 'sensor')} in {count(len(result.hours), 'hour')} "
        f"({result.parts_written:,} new, {result.parts_existing:,} already ingested, "
        f"{count(result.duplicates, 'reading')} already stored skipped) in "
        f"{result.seconds:.2f} s"
    )
    if result.rejected:
        err.print(f"{path}: rejected {result.rejected:,} rows "
                  f"(kept in {store_url}/{result.rejects_path}):")
        for r in result.rejects_sample:
            err.print(f"  line {r.line}: {r.reason}")
        if result.rejected > len(result.rejects_sample):
            err.print(f"  ... and {result.rejected - len(result.rejects_sample):,} more")


def replay(
    readings: Annotated[Path, typer.Argument(help="Readings CSV: TS,Device,Tag,Value.")],
    hub: Annotated[str, typer.Option(help="Event hub to send to.")] = "readings",
    namespace: Annotated[str | None, typer.Option(
        help="NAMESPACE.servicebus.windows.net, with your Azure identity.")] = None,
    connection_string_env: Annotated[str | None, typer.Option(
        help="Name of an environment variable holding a connection string.")] = None,
    speed: Annotated[str | None, typer.Option(
        help="Time speed-up: 60x, 1x, or max (default 60x; 1x with --shift-to-now).")] = None,
    batch_size: Annotated[int, typer.Option(help="Events per batch at most.")] = 500,
    shift_to_now: Annotated[bool, typer.Option(
        "--shift-to-now", help="Re-time the file so its first reading is now (one offset for all) "
        "and send in real time: rehearses the live path; Stream Analytics drops late readings.")] = False,
) -> None:
    """Send readings to Event Hubs, paced by their timestamps (partition key = Device)."""
    from fleetscore.data.readings import check_header
    from fleetscore.data.replay import make_producer
    from fleetscore.data.replay import replay as send

    connection, pace = _check_replay_options(namespace, connection_string_env, speed,
                                             batch_size=batch_size, shift_to_now=shift_to_now)
    check_header(readings)
    producer = make_producer(hub, namespace=namespace, connection_string=connection)
    try:
        with ProgressBar(f"replaying {readings.name}") as progress:
            summary = send(readings, producer, speed=pace, batch_size=batch_size,
                           shift_to_now=shift_to_now,
                           progress=(lambda n: progress(n, 0)) if progress else None)
    finally:
        producer.close()
    out.print(f"sent {summary.sent:,} readings in {summary.batches:,} batches to {hub} in "
              f"{summary.seconds:.1f} s ({summary.first} .. {summary.last}); "
              f"{summary.rejected:,} rows rejected")
    if summary.rejected:
        raise typer.Exit(3)


def _check_replay_options(namespace, connection_string_env, speed, *, batch_size: int,
                          shift_to_now: bool) -> tuple[str | None, float | None]:
    """(the connection string, the speed-up) the options name, or a usage error."""
    from fleetscore.data.replay import parse_speed

    if (namespace is None) == (connection_string_env is None):
        raise UsageError("give either --namespace or --connection-string-env")
    connection = None
    if connection_string_env:
        connection = os.environ.get(connection_string_env)
        if not connection:
            raise UsageError(f"the environment variable {connection_string_env} is not set")
    pace = parse_speed(speed or ("1x" if shift_to_now else "60x"))
    if shift_to_now and pace != 1.0:
        raise UsageError("--shift-to-now sends readings at their shifted times: use --speed 1x "
                         "(Stream Analytics drops events more than 5 minutes early)")
    if batch_size < 1:
        raise UsageError("--batch-size must be 1 or more")
    return connection, pace
