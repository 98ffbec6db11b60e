"""``python -m scoring_container --store S --window HOUR --run RUN --unit ID``
``python -m scoring_container train --store S --refit REFIT --group GROUP``

Scoring (the first form, unchanged since the image's first version) reads the unit's sensors
from the run's plan in the store, scores them with ``score_unit`` into the run's staging, and
records the unit's result. The exit code is a contract with Azure Batch,
which reruns a task on any nonzero exit, up to the task's ``constraints.maxTaskRetryCount``
("The Batch service retries a Task if its exit code is nonzero"; a task's
``exitConditions.exitCodes[].exitOptions`` only choose a ``jobAction`` and a
``dependencyAction``, never whether to retry). So a failure that a rerun cannot fix ends with
exit 0, and only a failure a rerun can fix is nonzero:

- 0: the task is done and a rerun would change nothing. Either the unit's result is recorded,
  whatever it says (all scored; partial, the failed sensors named; unusable: no such unit, a
  malformed sensor list, bad arguments), or nothing can be recorded because the command line
  itself is wrong (an hour that does not parse, no such store, a setting that does not parse):
  then stderr says why, and the backend, finding no result, reports the unit failed with that
  stderr. Bad arguments are recorded in the unit's result whenever the store, hour, run and
  unit can still be read from them.
- 1: a failure a retry can fix (the store unreachable): nothing final was recorded.

Training (``train``, a refit's group: fleetscore.runs.refit): trains the group's sensors as
challengers on the refit's train range, only while the store's models lock names the refit
(the orchestration holds it; the task renews it before each group of fits and refuses to write
once it does not), and records the group's result under ``refit/REFIT/results/``. The same
contract: 0 when the result is recorded (trained; refused because the lock no longer names the
refit; unusable: no such refit or group, a malformed record) or when the command line or
settings are wrong (stderr says why; the refit, finding no result, fails the group with
it); 1 for a failure a retry can fix, nothing final recorded.
"""

from __future__ import annotations

import argparse
import logging
import sys

from fleetscore import telemetry
from fleetscore.core.hours import Hour
from fleetscore.errors import FleetscoreError, InputError, UsageError
from fleetscore.runs.lifecycle import record_unusable, run_unit
from fleetscore.settings import Settings
from fleetscore.storage import open_store
from fleetscore.storage.workers import tune_gc

# EXIT_FINAL: a deterministic failure; 0 so that Batch does not retry it (see above).
EXIT_OK, EXIT_RETRY, EXIT_FINAL = 0, 1, 0
log = logging.getLogger("scoring_container")
OPTIONS = ("store", "window", "run", "unit")


class _Parser(argparse.ArgumentParser):
    """argparse that raises UsageError for bad arguments instead of exiting 2 (which Batch would
    retry); --help still prints and exits 0."""

    def error(self, message: str):  # type: ignore[override]
        self.print_usage(sys.stderr)
        raise UsageError(message)


def _strip_prefix(argv: list[str]) -> list[str]:
    # Batch may hand the task's command line to the image's ENTRYPOINT as arguments, or run it
    # as the whole command, depending on the container runtime: accept both shapes.
    return argv[3:] if argv[:3] == ["python", "-m", "scoring_container"] else argv


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = _Parser(prog="python -m scoring_container", description=__doc__,
                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--store", required=True, help="az://CONTAINER or a directory")
    parser.add_argument("--window", required=True, help="hour YYYY-MM-DDTHH (UTC)")
    parser.add_argument("--run", required=True, help="run id (fleetscore plan --save prints one)")
    parser.add_argument("--unit", required=True, help="unit id from the run's plan")
    return parser.parse_args(_strip_prefix(argv))


def parse_train_args(argv: list[str]) -> argparse.Namespace:
    parser = _Parser(prog="python -m scoring_container train", description=__doc__,
                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--store", required=True, help="az://CONTAINER or a directory")
    parser.add_argument("--refit", required=True, help="refit id (the orchestration's)")
    parser.add_argument("--group", required=True, help="group id from the refit's plan")
    return parser.parse_args(argv)


def train(argv: list[str]) -> int:
    """A refit's group of sensors, trained as challengers (see the module's docstring)."""
    from fleetscore.runs.refit import GroupResult, record, train_group

    try:
        args = parse_train_args(argv)
        settings = Settings.from_env()
    except SystemExit as exc:  # --help: argparse has printed and exits 0
        return EXIT_OK if not exc.code else EXIT_FINAL
    except UsageError as exc:
        log.error("bad arguments or settings, not retried: %s", exc)
        return EXIT_FINAL
    telemetry.setup("fleetscore-training")  # only with APPLICATIONINSIGHTS_CONNECTION_STRING
    try:
        try:
            store = open_store(args.store, settings)
        except UsageError as exc:  # no such store: nowhere to record a result
            log.error("group %s of %s: %s (not retried: the task's store is wrong)",
                      args.group, args.refit, exc)
            return EXIT_FINAL
        try:
            result = train_group(store, args.refit, args.group, workers=settings.workers or 1)
        except InputError as exc:  # the same inputs give the same answer: recorded, not retried
            result = record(store, args.refit, GroupResult(args.group, "unusable",
                                                           error=f"{exc.kind}: {exc}"))
        finally:
            store.close()
    except FleetscoreError as exc:
        log.error("group %s of %s: %s: %s", args.group, args.refit, exc.kind, exc)
        return EXIT_RETRY
    log.info("group %s of %s: %s, %d trained, %d skipped%s", args.group, args.refit,
             result.status, len(result.trained), len(result.skipped),
             f": {result.error}" if result.error else "")
    return EXIT_OK


def _record_bad_arguments(argv: list[str], error: UsageError) -> None:
    """Record bad arguments as the unit's (unusable) result when the store, hour, run and unit
    can still be read from them; otherwise stderr alone says why."""
    lenient = _Parser(add_help=False)
    for name in OPTIONS:
        lenient.add_argument(f"--{name}")
    try:
        known, _ = lenient.parse_known_args(_strip_prefix(argv))
    except UsageError:  # nothing readable (an option without its value)
        return
    if not all(getattr(known, name) for name in OPTIONS):
        return
    try:
        hour = Hour.parse(known.window)
        store = open_store(known.store, Settings.from_env())
    except FleetscoreError:
        return
    try:
        record_unusable(store, hour, known.run, known.unit, "UsageError",
                        f"bad arguments for the scoring container: {error}")
        log.info("unit %s of %s: recorded as unusable", known.unit, hour)
    except FleetscoreError as exc:
        log.error("could not record unit %s of %s as unusable: %s", known.unit, hour, exc)
    finally:
        store.close()


def main(argv: list[str] | None = None) -> int:
    tune_gc()
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s %(message)s")
    argv = sys.argv[1:] if argv is None else list(argv)
    if _strip_prefix(argv)[:1] == ["train"]:  # scoring's command line starts with an option
        return train(_strip_prefix(argv)[1:])
    try:
        args = parse_args(argv)
    except SystemExit as exc:  # --help or --version: argparse has printed and exits 0
        return EXIT_OK if not exc.code else EXIT_FINAL
    except UsageError as exc:
        log.error("bad arguments, not retried: %s", exc)
        _record_bad_arguments(argv, exc)
        return EXIT_FINAL
    try:
        hour = Hour.parse(args.window)
        settings = Settings.from_env()
    except UsageError as exc:  # no hour, or no settings: nowhere to record a result
        log.error("unit %s: %s (not retried: the task's command line or settings are wrong)",
                  args.unit, exc)
        return EXIT_FINAL
    telemetry.setup("fleetscore-scoring")  # only with APPLICATIONINSIGHTS_CONNECTION_STRING
    try:
        try:
            store = open_store(args.store, settings)
        except UsageError as exc:  # no such store: nowhere to record a result
            log.error("unit %s of %s: %s (not retried: the task's store is wrong)", args.unit,
                      args.window, exc)
            return EXIT_FINAL
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
