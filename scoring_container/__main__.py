"""``python -m scoring_container --store S --window HOUR --run RUN --unit ID``

Reads the unit's sensors from the run's plan in the store, scores them with ``score_unit`` into
the run's staging, and records the unit's result. The exit code is a contract with Azure Batch,
which reruns a task on any nonzero exit (up to ``maxTaskRetryCount``):

- 0: the unit's result is recorded, whatever it says: all scored, partial (some sensors failed,
  named in the result), or unusable (no such unit, a malformed sensor list). A rerun would
  change none of these, so Batch must not make one.
- 1: a failure a retry can fix (the store unreachable): nothing final was recorded.
- 2: bad arguments or no such store (the task's command line itself is wrong).
"""

from __future__ import annotations

import argparse
import logging
import sys

from fleetscore import telemetry
from fleetscore.errors import FleetscoreError, InputError, UsageError
from fleetscore.hours import Hour
from fleetscore.runs import record_unusable, run_unit
from fleetscore.settings import Settings
from fleetscore.stores import open_store
from fleetscore.workers import tune_gc

EXIT_OK, EXIT_RETRY, EXIT_USAGE = 0, 1, 2
log = logging.getLogger("scoring_container")


def parse_args(argv: list[str]) -> argparse.Namespace:
    # Batch may hand the task's command line to the image's ENTRYPOINT as arguments, or run it
    # as the whole command, depending on the container runtime: accept both shapes.
    if argv[:3] == ["python", "-m", "scoring_container"]:
        argv = argv[3:]
    parser = argparse.ArgumentParser(prog="python -m scoring_container", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--store", required=True, help="az://CONTAINER or a directory")
    parser.add_argument("--window", required=True, help="hour YYYY-MM-DDTHH (UTC)")
    parser.add_argument("--run", required=True, help="run id (fleetscore plan --save prints one)")
    parser.add_argument("--unit", required=True, help="unit id from the run's plan")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    tune_gc()
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s %(message)s")
    try:
        args = parse_args(sys.argv[1:] if argv is None else argv)
        hour = Hour.parse(args.window)
    except SystemExit as exc:  # argparse has printed the usage line
        return EXIT_USAGE if exc.code else EXIT_OK
    except UsageError as exc:
        log.error("%s", exc)
        return EXIT_USAGE
    settings = Settings.from_env()
    telemetry.setup("fleetscore-scoring")  # only with APPLICATIONINSIGHTS_CONNECTION_STRING
    try:
        try:
            store = open_store(args.store, settings)
        except UsageError as exc:  # no such store: nowhere to record a result
            log.error("%s", exc)
            return EXIT_USAGE
        try:
            try:
                result = run_unit(store, hour, args.run, args.unit)
            except (InputError, UsageError) as exc:
                log.error("unit %s of %s: %s", args.unit, args.window, exc)
                record_unusable(store, hour, args.run, args.unit, exc.kind, str(exc))
                return EXIT_OK
        finally:
            store.close()
    except FleetscoreError as exc:
        log.error("unit %s of %s: %s: %s", args.unit, args.window, exc.kind, exc)
        return EXIT_RETRY
    log.info("unit %s of %s: %s, %d scored, %d failed, %d anomalies, %.2f s", result.unit_id,
             result.window, result.status, result.scored, len(result.failures), result.anomalies,
             result.duration_s)
    for failure in result.failures:
        log.warning("sensor %s failed: %s: %s", failure.sensor, failure.kind, failure.message)
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
