"""The real scoring container, built with podman from scoring_container/Dockerfile and run the way
Azure Batch runs a container task: the task's working directory (not the image's WORKDIR)
mounted and current, the task's command line handed to the image's ENTRYPOINT, its environment
settings, and the store on Azurite over the host network. ``make container-test`` runs only this
file; ``make test`` includes it. Where containers cannot run it skips saying why (under CI=true it
fails instead). The image build is in tests/conftest.py (``scoring_image``)."""

from __future__ import annotations

import csv
import inspect
import io
import shlex
import time
from pathlib import Path

import pytest

from fleetscore.compute.batch import BatchBackend
from fleetscore.compute.local import SequentialBackend
from fleetscore.core.hours import Hour
from fleetscore.runs.engine import ENGINE
from fleetscore.scoring.planning import make_plan, save_plan
from fleetscore.settings import BatchSettings, Settings
from fleetscore.storage import LocalStore

pytestmark = pytest.mark.container

WINDOW = Hour.parse("2024-03-01T01")
TASK_DIR = "/taskdir"  # where Batch mounts the task's working directory, as seen in the container


class _NoClient:
    """task_spec needs no service: the backend only builds the task's description."""

    def close(self) -> None:
        pass


def _task_spec(backend: BatchBackend, window: Hour, unit_id: str, run_id: str):
    # The command line follows the product: whatever BatchBackend would submit, run_id included
    # once task_spec takes one.
    if "run_id" in inspect.signature(backend.task_spec).parameters:
        return backend.task_spec(window, unit_id, run_id=run_id)
    return backend.task_spec(window, unit_id)


def _podman_run_args(spec, image: str, task_dir: Path, *, extra_env: dict[str, str],
                     working_directory: str | None = None, user: str | None = None) -> list[str]:
    """``podman run`` as Batch's container task runs ``docker run``: the task directory mounted
    and, when the task's container settings say ``taskWorkingDirectory`` (Batch's default),
    made current (``containerImageDefault``: the image's WORKDIR), the task's environment
    settings, the task's container run options, the task's command line as the ENTRYPOINT's
    arguments. ``working_directory`` overrides the spec's; ``user`` runs as another user."""
    settings = spec.container_settings
    args = ["run", *shlex.split(settings.container_run_options or ""), "--network", "host",
            "-v", f"{task_dir}:{TASK_DIR}"]
    working = getattr(settings, "working_directory", None)
    working = working_directory or getattr(working, "value", working) or "taskWorkingDirectory"
    assert working in ("taskWorkingDirectory", "containerImageDefault")
    if working == "taskWorkingDirectory":
        args += ["-w", TASK_DIR]
    if user:
        args += ["--user", user]
    for env in spec.environment_settings or []:
        args += ["-e", f"{env.name}={env.value}"]
    for name, value in extra_env.items():
        args += ["-e", f"{name}={value}"]
    return [*args, image, *shlex.split(spec.command_line)]


def _save_plan(store, plan, run_id: str) -> None:
    # A plan belongs to a run once the run lifecycle keys plans by run id.
    if "run_id" in inspect.signature(save_plan).parameters:
        save_plan(store, plan, run_id)
    else:
        save_plan(store, plan)


def _csv_rows(store, paths) -> dict[str, list[list[str]]]:
    return {p: list(csv.reader(io.StringIO(store.get(p).decode()))) for p in sorted(paths)
            if p.endswith(".csv")}


def test_container_scores_units_from_a_task_directory_like_the_local_backend(
        scoring_image, trained_store, blob_store, azurite, tmp_path):
    podman, image = scoring_image
    run_id = "r-container-test"
    plan = make_plan(trained_store, WINDOW, unit_size=2)
    assert len(plan.units) == 2
    _save_plan(trained_store, plan, run_id)
    # The same inputs (windows, models, bank, plan) in a blob container on Azurite.
    for path in trained_store.list(""):
        blob_store.put(path, trained_store.get(path))
    before = set(blob_store.list(""))
    # The reference: the local backend scores the same units of the same run on a copy.
    reference = LocalStore(tmp_path / "reference")
    for path in trained_store.list(""):
        reference.put(path, trained_store.get(path))
    SequentialBackend(reference, ENGINE).submit(WINDOW, list(plan.units), run_id=run_id)
    expected = _csv_rows(reference, set(reference.list("")) - before)
    assert expected and sum(len(rows) - 1 for rows in expected.values()) > 0

    settings = Settings(storage_connection_string=azurite.connection_string,
                        batch=BatchSettings(image=image))
    backend = BatchBackend(blob_store, blob_store.url, settings, client=_NoClient(), engine=ENGINE)
    # The storage emulator's connection string stands in for the pool's managed identity.
    extra_env = {"FLEETSCORE_STORAGE_CONNECTION_STRING": azurite.connection_string}
    for i, unit in enumerate(plan.units):
        task_dir = tmp_path / f"task-{unit.id}" / "wd"
        task_dir.mkdir(parents=True)
        # Decoys in the task directory: the image must import its own packages, never the
        # current directory's (a Batch task directory holds whatever resource files a job adds).
        for name, code in (("scoring_container", 97), ("fleetscore", 98)):
            (task_dir / name).mkdir()
            (task_dir / name / "__init__.py").write_text(f"raise SystemExit({code})\n")
        spec = _task_spec(backend, WINDOW, unit.id, run_id=run_id)
        assert spec.container_settings.image_name == image
        # The first unit as the backend submits it (containerImageDefault: the image's
        # WORKDIR), the second as Batch runs a task by default (in the task directory).
        args = _podman_run_args(spec, image, task_dir, extra_env=extra_env,
                                working_directory=None if i == 0 else "taskWorkingDirectory")
        started = time.monotonic()
        proc = podman(*args, check=False, timeout=300)
        assert proc.returncode == 0, (
            f"unit {unit.id} exited {proc.returncode} after {time.monotonic() - started:.1f} s:\n"
            f"podman {shlex.join(args)}\n{proc.stderr[-3000:]}")
        assert f"unit {unit.id} of {WINDOW}: succeeded" in proc.stderr
    got = _csv_rows(blob_store, set(blob_store.list("")) - before)
    assert got.keys() == expected.keys()
    assert got == expected


def test_container_image_runs_as_non_root_with_an_installed_entry_point(scoring_image, tmp_path):
    podman, image = scoring_image
    proc = podman("run", "--rm", "-w", "/", "--entrypoint", "python", image, "-c",
                  "import os, scoring_container, fleetscore, sys; "
                  "print(os.getuid(), scoring_container.__file__, fleetscore.__file__, sys.prefix)",
                  check=False, timeout=120)
    assert proc.returncode == 0, proc.stderr
    uid, container_file, fleetscore_file, prefix = proc.stdout.split()
    assert uid != "0"
    # Installed into the image's environment, not imported from a source folder.
    assert "site-packages" in container_file and "site-packages" in fleetscore_file
    # The usage error of the entry point itself, from an arbitrary directory: exit 0 (Batch
    # must not retry it) with the reason on stderr, no "No module named scoring_container".
    proc = podman("run", "--rm", "-w", "/tmp", image, "--window", "2024-03-01T01",
                  check=False, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "the following arguments are required" in proc.stderr
    assert "No module named" not in proc.stderr


@pytest.mark.reliability("R76")
def test_container_scores_when_the_task_directory_belongs_to_another_user(
        scoring_image, trained_store, blob_store, azurite, tmp_path):
    """Batch gives the task directory to the task user ("All files and directories of a task
    are owned by the task user", Files and directories in Azure Batch); the image runs as its
    own uid 10001, or as a task user Batch names. With the directory owned by another user,
    closed (0700) or read-only (0555) to the image's user, the unit still scores: the task runs
    in the image's WORKDIR (its container settings say containerImageDefault), and home,
    temporary files and caches are in /tmp. Before, the container could not even start in a
    closed task directory (Batch's default working directory is the task's)."""
    import os

    podman, image = scoring_image
    run_id = "r-foreign-taskdir"
    plan = make_plan(trained_store, WINDOW, unit_size=2)
    _save_plan(trained_store, plan, run_id)
    for path in trained_store.list(""):
        blob_store.put(path, trained_store.get(path))
    settings = Settings(storage_connection_string=azurite.connection_string,
                        batch=BatchSettings(image=image))
    backend = BatchBackend(blob_store, blob_store.url, settings, client=_NoClient(), engine=ENGINE)
    extra_env = {"FLEETSCORE_STORAGE_CONNECTION_STRING": azurite.connection_string}
    task_user = 4242  # neither root nor the image's user
    runs = [(plan.units[0], 0o700, None), (plan.units[1], 0o555, None),
            (plan.units[0], 0o700, f"{task_user}:{task_user}")]
    for n, (unit, mode, user) in enumerate(runs):
        task_dir = tmp_path / f"task-{n}" / "wd"
        task_dir.mkdir(parents=True)
        (task_dir / "resource.txt").write_text("a resource file a job put here\n")
        os.chown(task_dir, task_user, task_user)
        task_dir.chmod(mode)
        spec = _task_spec(backend, WINDOW, unit.id, run_id=run_id)
        args = _podman_run_args(spec, image, task_dir, extra_env=extra_env, user=user)
        proc = podman(*args, check=False, timeout=300)
        assert proc.returncode == 0, f"podman {shlex.join(args)}\n{proc.stderr[-3000:]}"
        assert f"unit {unit.id} of {WINDOW}: succeeded" in proc.stderr, proc.stderr[-3000:]
        assert sorted(p.name for p in task_dir.iterdir()) == ["resource.txt"]  # nothing left
    # Home, temporary files and caches are writable for the image's user and a task user.
    probe = ("import os, tempfile; home = os.environ['HOME']; "
             "os.makedirs(os.path.join(home, '.cache', 'probe'), exist_ok=True); "
             "tempfile.NamedTemporaryFile().close(); "
             "os.makedirs(os.environ['XDG_CACHE_HOME'], exist_ok=True); "
             "os.makedirs(os.environ['MPLCONFIGDIR'], exist_ok=True); print(os.getcwd())")
    for user in (None, f"{task_user}:{task_user}"):
        args = ["run", "--rm", *(["--user", user] if user else []), "--entrypoint", "python",
                image, "-c", probe]
        proc = podman(*args, check=False, timeout=120)
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout.strip() == "/srv/scoring"


def test_container_trains_a_refit_group_as_the_batch_task_runs_it(
        scoring_image, trained_store, blob_store, azurite, tmp_path):
    """A refit's training group as a Batch task of the same image in its train mode: the
    refit holds the models lock, the task trains the group's sensors as challengers in the
    store on Azurite and records its result (the scheduled refit's step on Batch)."""
    from datetime import UTC, datetime, timedelta

    from fleetscore.compute.batch import train_command_line
    from fleetscore.core.sensors import Sensor
    from fleetscore.model.versions import read_history
    from fleetscore.runs import refit as policy

    podman, image = scoring_image
    for path in trained_store.list(""):
        blob_store.put(path, trained_store.get(path))
    lock = policy.RefitLock(blob_store, "refit-image", ttl=timedelta(minutes=10))
    assert lock.take()
    found = policy.plan(blob_store, "refit-image", policy.RefitOptions(days=1, compare_hours=1),
                        started=datetime.now(UTC), ttl=timedelta(minutes=10))
    [group] = found.groups
    settings = Settings(storage_connection_string=azurite.connection_string,
                        batch=BatchSettings(image=image))
    backend = BatchBackend(blob_store, blob_store.url, settings, client=_NoClient(), engine=ENGINE)
    spec = _task_spec(backend, WINDOW, group, run_id="unused")
    spec.command_line = train_command_line(blob_store.url, "refit-image", group)
    task_dir = tmp_path / "task-train" / "wd"
    task_dir.mkdir(parents=True)
    args = _podman_run_args(spec, image, task_dir, extra_env={
        "FLEETSCORE_STORAGE_CONNECTION_STRING": azurite.connection_string})
    proc = podman(*args, check=False, timeout=300)
    assert proc.returncode == 0, f"podman {shlex.join(args)}\n{proc.stderr[-3000:]}"
    result = policy.read_result(blob_store, "refit-image", group)
    assert result is not None and result.status == "trained", proc.stderr[-3000:]
    assert sorted(s for s, _ in result.trained) == ["1/1", "1/2", "dev_a/t.x"]
    for sensor, version in result.trained:
        history = read_history(blob_store, Sensor.parse(sensor))
        assert history.challenger.number == version and history.champion.number == 1
    lock.release()


def test_container_test_skips_only_outside_ci(monkeypatch):
    """Where containers cannot run, the container tests skip saying why, except under CI=true,
    where they fail: CI must never pass without having run the real image."""
    from tests.conftest import containers_unavailable

    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="cannot run in CI: no podman"):
        containers_unavailable("no podman")
    monkeypatch.setenv("CI", "false")
    with pytest.raises(pytest.skip.Exception, match="containers cannot run here: no podman"):
        containers_unavailable("no podman")
