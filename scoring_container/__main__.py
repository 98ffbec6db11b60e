"""``python -m scoring_container --store S --window HOUR --unit ID``

Reads the unit's sensors from the hour's plan in the store, scores them with ``score_unit``,
writes the unit's result, and exits 0 (all scored), 3 (partial: some sensors failed, the rest
written) or 2 (unusable input: no such unit, a bad argument); 1 for a failure worth retrying
(the store unreachable), which Batch retries up to the task's retry count.
"""

from __future__ import annotations

import argparse
import logging
import sys

from fleetscore import telemetry
from fleetscore.errors import FleetscoreError, InputError, UsageError
from fleetscore.hours import Hour
from fleetscore.runs import run_unit
from fleetscore.settings import Settings
from fleetscore.stores import open_store

EXIT_OK, EXIT_RETRY, EXIT_UNUSABLE, EXIT_PARTIAL = 0, 1, 2, 3
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
    parser.add_argument("--unit", required=True, help="unit id from the hour's plan")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s %(message)s")
    try:
        args = parse_args(sys.argv[1:] if argv is None else argv)
    except SystemExit as exc:  # argparse has printed the usage line
        return EXIT_UNUSABLE if exc.code else EXIT_OK
    settings = Settings.from_env()
    telemetry.setup("fleetscore-scoring")  # only with APPLICATIONINSIGHTS_CONNECTION_STRING
    try:
        store = open_store(args.store, settings)
        try:
            result = run_unit(store, Hour.parse(args.window), args.unit)
        finally:
            store.close()
    except (InputError, UsageError) as exc:
        log.error("unit %s of %s: %s", args.unit, args.window, exc)
        return EXIT_UNUSABLE
    except FleetscoreError as exc:
        log.error("unit %s of %s: %s: %s", args.unit, args.window, exc.kind, exc)
        return EXIT_RETRY
    log.info("unit %s of %s: %s, %d scored, %d failed, %d anomalies, %.2f s", result.unit_id,
             result.window, result.status, result.scored, len(result.failures), result.anomalies,
             result.duration_s)
    for failure in result.failures:
        log.warning("sensor %s failed: %s: %s", failure.sensor, failure.kind, failure.message)
    if result.failures:
        return EXIT_PARTIAL
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
