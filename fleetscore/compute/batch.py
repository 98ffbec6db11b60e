"""Azure Batch: each unit is a task running the scoring container on an autoscale-from-zero pool.

One job per run of an hour (``fs-YYYYMMDDTHH-<run id>``), one task per unit (the unit's id), so
a resubmission after an activity retry finds its task instead of adding a duplicate. Tasks are
added at most 100 a request (the service's limit; azure-batch 15.x no longer splits for you),
and the job is told to terminate when its tasks complete only once every task is added (at
``finish``), because setting it at creation races the submission. A task's command line holds
no secret: the container reaches the store with the pool's managed identity. Each task's
environment settings carry the store, the pool identity's client id (``AZURE_CLIENT_ID``, from
``FLEETSCORE_BATCH_IDENTITY_CLIENT_ID``) and, when the app has one, its
``APPLICATIONINSIGHTS_CONNECTION_STRING``, so that the container exports its unit metrics with
the pool identity (which infra gives "Monitoring Metrics Publisher" on Application Insights).
"""

from __future__ import annotations

import os
import shlex
from collections.abc import Mapping, Sequence
from datetime import timedelta
from importlib import resources

from azure.batch import BatchClient
from azure.batch import models as bm
from azure.core.credentials import AzureNamedKeyCredential
from azure.core.exceptions import AzureError, HttpResponseError, ResourceExistsError, ResourceNotFoundError

from fleetscore.compute.base import (
    FAILED,
    PENDING,
    RUNNING,
    SUCCEEDED,
    ComputeBackend,
    Engine,
    UnitStatus,
)
from fleetscore.core.hours import Hour
from fleetscore.errors import BackendError, UsageError, first_line
from fleetscore.scoring.planning import Unit
from fleetscore.settings import BatchSettings, Settings
from fleetscore.storage import Store

MAX_TASKS_PER_REQUEST = 100
# The app's own setting, handed on to each task (fleetscore.telemetry reads the same name).
APPINSIGHTS_SETTING = "APPLICATIONINSIGHTS_CONNECTION_STRING"
# Container-ready Ubuntu for Batch: Docker-compatible runtime preinstalled.
IMAGE_REFERENCE = {"publisher": "microsoft-dsvm", "offer": "ubuntu-hpc", "sku": "2204",
                   "version": "latest"}
NODE_AGENT_SKU = "batch.node.ubuntu 22.04"
EXIT_PARTIAL, EXIT_UNUSABLE = 3, 2
# One status listing names at most this many task ids, in at most this many characters of
# $filter (about 2.6 KB once URL-encoded): far below URL limits, one page per listing.
FILTER_MAX_IDS, FILTER_MAX_CHARS = 100, 2000

# The one definition of the pool's autoscale formula, autoscale.formula beside this module
# (infra's Bicep loads the same file). From zero: the target follows the
# pending tasks (queued + running), using the last sample while too few samples exist yet,
# and 0 when a new pool has none (max(0, GetSample(1)), the form of the Batch documentation's
# task-based example); nodes leave only when their tasks complete.
AUTOSCALE_FORMULA = (resources.files(__package__) / "autoscale.formula").read_text().strip()
EVALUATION_INTERVAL = timedelta(minutes=5)


def autoscale_formula(max_nodes: int, *, spot: bool = False, tasks_per_node: int = 1) -> str:
    if max_nodes < 1 or tasks_per_node < 1:
        raise UsageError("the pool needs max nodes >= 1 and tasks per node >= 1")
    return AUTOSCALE_FORMULA.format(
        max_nodes=int(max_nodes), tasks_per_node=int(tasks_per_node),
        dedicated="0" if spot else "$nodes", low_priority="$nodes" if spot else "0",
    )


def job_id(window: Hour, run_id: str) -> str:
    return f"fs-{window.start:%Y%m%dT%H}-{run_id}"[:64]


def command_line(store_url: str, window: Hour, run_id: str, unit_id: str) -> str:
    return " ".join(shlex.quote(a) for a in (
        "python", "-m", "scoring_container", "--store", store_url, "--window", str(window),
        "--run", run_id, "--unit", unit_id))


def refit_job_id(refit_id: str) -> str:
    return f"fs-{refit_id}"[:64]


def train_command_line(store_url: str, refit_id: str, group: str) -> str:
    """The same image in its train mode (scoring_container's docstring)."""
    return " ".join(shlex.quote(a) for a in (
        "python", "-m", "scoring_container", "train", "--store", store_url, "--refit", refit_id,
        "--group", group))


def id_filters(unit_ids: Sequence[str], *, max_chars: int = FILTER_MAX_CHARS,
               max_ids: int = FILTER_MAX_IDS) -> list[str]:
    """``id eq 'a' or id eq 'b' ...`` expressions (OData quoting) covering ``unit_ids``, each at
    most ``max_chars`` long and naming at most ``max_ids`` ids, so a listing's URL stays short."""
    out, terms, size = [], [], 0
    for unit_id in unit_ids:
        term = "id eq '{}'".format(unit_id.replace("'", "''"))
        if terms and (size + len(term) + 4 > max_chars or len(terms) >= max_ids):
            out.append(" or ".join(terms))
            terms, size = [], 0
        terms.append(term)
        size += len(term) + 4
    if terms:
        out.append(" or ".join(terms))
    return out


def make_client(batch: BatchSettings) -> BatchClient:
    if not batch.endpoint:
        raise UsageError("the batch backend needs FLEETSCORE_BATCH_ENDPOINT "
                         "(https://ACCOUNT.REGION.batch.azure.com)")
    if batch.account_name and batch.account_key:
        credential = AzureNamedKeyCredential(batch.account_name, batch.account_key)
    else:
        from azure.identity import DefaultAzureCredential

        credential = DefaultAzureCredential()
    return BatchClient(batch.endpoint, credential)


class BatchBackend(ComputeBackend):
    name = "batch"
    trains = True

    def __init__(self, store: Store, store_spec: str, settings: Settings,
                 client: BatchClient | None = None,
                 environ: Mapping[str, str] | None = None, *, engine: Engine) -> None:
        self._engine = engine
        self.settings = settings
        self.batch = settings.batch
        # The app's Application Insights connection string, passed on to the tasks: read here,
        # once, where the backend is built (Settings has no field for it; telemetry reads it).
        env = os.environ if environ is None else environ
        self._appinsights = env.get(APPINSIGHTS_SETTING) or None
        self._store = store
        self._store_spec = store_spec
        self._client = client or make_client(self.batch)
        self._pool_ready = False
        self._jobs: set[str] = set()
        self._done: dict[str, dict[str, UnitStatus]] = {}  # job -> units seen finished

    # --- pool -----------------------------------------------------------------------------

    def pool_spec(self) -> bm.BatchPoolCreateOptions:
        b = self.batch
        registries = []
        if b.registry:
            registries.append(bm.ContainerRegistryReference(
                registry_server=b.registry,
                identity_reference=bm.BatchNodeIdentityReference(resource_id=b.identity_resource_id)
                if b.identity_resource_id else None))
        return bm.BatchPoolCreateOptions(
            id=b.pool_id,
            vm_size=b.vm_size,
            virtual_machine_configuration=bm.VirtualMachineConfiguration(
                image_reference=bm.BatchVmImageReference(**IMAGE_REFERENCE),
                node_agent_sku_id=NODE_AGENT_SKU,
                container_configuration=bm.BatchContainerConfiguration(
                    type=bm.ContainerType.DOCKER_COMPATIBLE,
                    container_image_names=[b.image],  # prefetched when a node starts
                    container_registries=registries or None,
                ),
            ),
            enable_auto_scale=True,
            auto_scale_formula=autoscale_formula(b.max_nodes, spot=b.spot,
                                                 tasks_per_node=b.tasks_per_node),
            auto_scale_evaluation_interval=EVALUATION_INTERVAL,
            task_slots_per_node=b.tasks_per_node,
        )

    def ensure_pool(self) -> None:
        if self._pool_ready:
            return
        with _errors(f"pool {self.batch.pool_id}"):
            try:
                exists = self._client.pool_exists(self.batch.pool_id)
            except ResourceNotFoundError:
                # azure-batch 15.1.0's error policy raises on the 404 that pool_exists expects.
                exists = False
            if not exists:
                try:
                    self._client.create_pool(self.pool_spec())
                except ResourceExistsError:
                    pass  # created meanwhile by another submitter
        self._pool_ready = True

    # --- jobs and tasks -------------------------------------------------------------------

    def _ensure_job(self, jid: str) -> str:
        if jid in self._jobs:
            return jid
        with _errors(f"job {jid}"):
            try:
                self._client.create_job(bm.BatchJobCreateOptions(
                    id=jid, pool_info=bm.BatchPoolInfo(pool_id=self.batch.pool_id),
                    # Not TERMINATE_JOB yet: that races the task submission (see finish).
                    all_tasks_complete_mode=bm.BatchAllTasksCompleteMode.NO_ACTION,
                ))
            except ResourceExistsError:
                pass  # a retried activity: the job of this run is already there
        self._jobs.add(jid)
        return jid

    def task_spec(self, window: Hour, unit_id: str, run_id: str = "") -> bm.BatchTaskCreateOptions:
        return self._task(unit_id, command_line(self._store_spec, window, run_id, unit_id),
                          f"logs/{window}/{unit_id}")

    def _task(self, task_id: str, line: str, logs: str) -> bm.BatchTaskCreateOptions:
        """A task of the scoring image running ``line``, its stdout/stderr kept at ``logs``."""
        b = self.batch
        environment = [bm.EnvironmentSetting(name="FLEETSCORE_STORE", value=self._store_spec)]
        if self.settings.storage_account_url:
            environment.append(bm.EnvironmentSetting(name="FLEETSCORE_STORAGE_ACCOUNT_URL",
                                                     value=self.settings.storage_account_url))
        if b.identity_client_id:
            # The pool identity, for DefaultAzureCredential in the task: the store and the
            # unit metrics (Application Insights with local auth off takes Entra tokens only).
            environment.append(bm.EnvironmentSetting(name="AZURE_CLIENT_ID",
                                                     value=b.identity_client_id))
        if self._appinsights:
            environment.append(bm.EnvironmentSetting(name=APPINSIGHTS_SETTING,
                                                     value=self._appinsights))
        outputs = None
        if b.logs_container_url:
            outputs = [bm.OutputFile(
                file_pattern="../std*.txt",  # stdout.txt and stderr.txt beside the task's wd
                destination=bm.OutputFileDestination(container=bm.OutputFileBlobContainerDestination(
                    container_url=b.logs_container_url, path=logs,
                    identity_reference=bm.BatchNodeIdentityReference(resource_id=b.identity_resource_id)
                    if b.identity_resource_id else None)),
                upload_options=bm.OutputFileUploadConfiguration(
                    upload_condition=bm.OutputFileUploadCondition.TASK_COMPLETION),
            )]
        return bm.BatchTaskCreateOptions(
            id=task_id,
            command_line=line,
            # The image's own working directory, not the task's: Batch makes the task directory
            # the task user's, and the image runs as its own user (uid 10001), which may not
            # even enter it. The container needs nothing there (Batch collects stdout/stderr).
            container_settings=bm.BatchTaskContainerSettings(
                image_name=b.image, container_run_options="--rm",
                working_directory=bm.ContainerWorkingDirectory.CONTAINER_IMAGE_DEFAULT),
            constraints=bm.BatchTaskConstraints(
                max_task_retry_count=b.task_retries,
                max_wall_clock_time=timedelta(minutes=b.task_timeout_minutes)),
            environment_settings=environment,
            output_files=outputs,
        )

    def submit(self, window: Hour, units: Sequence[Unit], *, run_id: str = "") -> None:
        if not units:
            return
        self.ensure_pool()
        jid = self._ensure_job(job_id(window, run_id))
        self._add_tasks(jid, [self.task_spec(window, u.id, run_id) for u in units])

    def _add_tasks(self, jid: str, specs: Sequence[bm.BatchTaskCreateOptions]) -> None:
        """At most 100 tasks a request; a task already in the job (a retried activity) counts
        as added."""
        for start in range(0, len(specs), MAX_TASKS_PER_REQUEST):
            chunk = specs[start : start + MAX_TASKS_PER_REQUEST]
            with _errors(f"tasks of job {jid}"):
                result = self._client.create_task_collection(jid, bm.BatchTaskGroup(task_values=chunk))
            problems = [r for r in (result.result_values or [])
                        if r.status != bm.BatchTaskAddStatus.SUCCESS
                        and not (r.error is not None and r.error.code == "TaskExists")]
            if problems:
                first = problems[0]
                message = first.error.message if first.error is not None else None
                text = getattr(message, "value", message) or first.status
                raise BackendError(f"Batch refused {len(problems)} task(s) of job {jid}, "
                                   f"first {first.task_id}: {text}")

    def poll(self, window: Hour, unit_ids: Sequence[str], *, run_id: str = "",
             timeout: float = 1.0) -> dict[str, UnitStatus]:
        """The units' states, at a cost of O(units still pending), never O(tasks of the job):
        a unit seen finished is answered from memory (its result blob read once); the others
        are listed by id (``$filter=id eq 'a' or id eq 'b' ...``, chunked to keep URLs short).
        A job that does not exist (404 JobNotFound) has none of the units."""
        jid = job_id(window, run_id)
        if jid not in self._done and len(self._done) >= 16:
            self._done.pop(next(iter(self._done)))  # a worker polls a few runs at most
        done = self._done.setdefault(jid, {})
        tasks, missing_job = self._list(jid, [u for u in unit_ids if u not in done])
        out: dict[str, UnitStatus] = {}
        for unit_id in unit_ids:
            if unit_id in done:
                out[unit_id] = done[unit_id]
                continue
            if missing_job:
                out[unit_id] = UnitStatus(FAILED, error_kind="TaskMissing",
                                          error=f"job {jid} does not exist")
                continue
            task = tasks.get(unit_id)
            status = self._status(window, run_id, jid, unit_id, task)
            if task is not None and status.done:
                done[unit_id] = status
            out[unit_id] = status
        return out

    def _list(self, jid: str, task_ids: Sequence[str]) -> tuple[dict, bool]:
        """The job's tasks of these ids (listed by id, chunked), and whether the job is
        missing (404 JobNotFound)."""
        tasks: dict = {}
        for expression in id_filters(task_ids):
            try:
                with _errors(f"tasks of job {jid}"):
                    for task in self._client.list_tasks(jid, filter=expression,
                                                        select=["id", "state", "executionInfo"]):
                        tasks[task.id] = task
            except BackendError as exc:
                if not isinstance(exc.__cause__, ResourceNotFoundError):
                    raise
                return tasks, True
        return tasks, False

    def _status(self, window: Hour, run_id: str, jid: str, unit_id: str, task) -> UnitStatus:
        if task is None:
            return UnitStatus(FAILED, error_kind="TaskMissing",
                              error=f"job {jid} has no task {unit_id}")
        if task.state in (bm.BatchTaskState.ACTIVE, bm.BatchTaskState.PREPARING):
            return UnitStatus(PENDING)  # queued, or preempted and requeued by Batch
        if task.state == bm.BatchTaskState.RUNNING:
            return UnitStatus(RUNNING)
        info = task.execution_info
        exit_code = info.exit_code if info is not None else None
        if exit_code in (0, EXIT_PARTIAL):
            result = self._engine.read_unit_result(self._store, window, run_id, unit_id)
            if result is not None:
                return UnitStatus(result.status, result)
            # The container ends a failure no rerun can fix with exit 0 (so that Batch does not
            # retry it) and, when it cannot record a result, says why on stderr.
            tail = self._stderr_tail(jid, unit_id)
            return UnitStatus(FAILED, error_kind="ResultMissing",
                              error=f"task {unit_id} exited {exit_code} but wrote no result"
                                    + (f"; stderr: {tail}" if tail else ""))
        return self._failure(jid, unit_id, task)

    def _failure(self, jid: str, task_id: str, task) -> UnitStatus:
        """A completed task that failed (after Batch's retries): why, from its failure info,
        its exit code and the last lines of its stderr."""
        info = task.execution_info
        exit_code = info.exit_code if info is not None else None
        reason = []
        failure = info.failure_info if info is not None else None
        if failure is not None:
            reason.append(f"{failure.code}: {failure.message}")
        if exit_code is not None:
            reason.append(f"exit code {exit_code}")
        tail = self._stderr_tail(jid, task_id)
        if tail:
            reason.append(f"stderr: {tail}")
        category = getattr(failure.category, "value", failure.category) if failure else None
        kind = {"usererror": "TaskUserError", "servererror": "TaskServerError"}.get(
            str(category).lower(), "TaskFailed")
        return UnitStatus(FAILED, error_kind=kind, error="; ".join(reason) or "task failed")

    def _stderr_tail(self, jid: str, unit_id: str, lines: int = 5) -> str:
        try:
            data = b"".join(self._client.download_task_file(jid, unit_id, "stderr.txt"))
        except AzureError:
            return ""  # the node may be gone already; the failure info still says why
        return " | ".join(data.decode("utf-8", errors="replace").strip().splitlines()[-lines:])

    def cancel(self, window: Hour, unit_ids: Sequence[str], *, run_id: str = "") -> None:
        """Terminate the tasks (REST: POST /jobs/{job}/tasks/{task}/terminate; the task moves
        to completed). A task that already completed is left as it is."""
        jid = job_id(window, run_id)
        for unit_id in unit_ids:
            try:
                self._client.terminate_task(jid, unit_id)
            except (ResourceNotFoundError, ResourceExistsError):
                continue  # no such task or job, or it completed meanwhile (409)
            except HttpResponseError as exc:
                if exc.status_code == 409:
                    continue
                raise BackendError(f"cannot terminate task {unit_id} of job {jid}: "
                                   f"{first_line(exc)}") from exc
            except AzureError as exc:
                raise BackendError(f"cannot terminate task {unit_id} of job {jid}: "
                                   f"{first_line(exc)}") from exc

    def finish(self, window: Hour, *, run_id: str = "") -> None:
        jid = job_id(window, run_id)
        self._done.pop(jid, None)
        self._seal(jid)

    def _seal(self, jid: str) -> None:
        """The job ends once its tasks complete (set only after every task was added). A
        retried finalize may find it completed already, by its first seal: 409 JobCompleted
        (a completed job takes no further changes) is that, not an error."""
        try:
            self._client.update_job(jid, bm.BatchJobUpdateOptions(
                all_tasks_complete_mode=bm.BatchAllTasksCompleteMode.TERMINATE_JOB))
        except ResourceNotFoundError:
            pass  # nothing was submitted in this run
        except HttpResponseError as exc:
            code = exc.error.code if exc.error is not None else None
            if exc.status_code != 409 or code != "JobCompleted":
                raise BackendError(f"cannot seal job {jid}: {first_line(exc)}") from exc
        except AzureError as exc:
            raise BackendError(f"cannot seal job {jid}: {first_line(exc)}") from exc

    # --- a refit's training groups: tasks of the same image in its train mode ----------------

    def submit_training(self, refit_id: str, groups: Sequence[str]) -> None:
        """One task a group in the refit's job (``fs-<refit id>``), task id = group id: a
        retried activity finds its tasks there."""
        if not groups:
            return
        self.ensure_pool()
        jid = self._ensure_job(refit_job_id(refit_id))
        self._add_tasks(jid, [self._task(g, train_command_line(self._store_spec, refit_id, g),
                                         f"logs/{refit_id}/{g}") for g in groups])

    def poll_training(self, refit_id: str, groups: Sequence[str]) -> dict[str, UnitStatus]:
        """Exit 0 is succeeded: the task recorded the group's result (whatever it says) or
        said on stderr why it could not, which the caller reads from the store; any other end
        is failed with why."""
        jid = refit_job_id(refit_id)
        tasks, missing_job = self._list(jid, groups)
        out: dict[str, UnitStatus] = {}
        for group in groups:
            task = tasks.get(group)
            if missing_job or task is None:
                out[group] = UnitStatus(FAILED, error_kind="TaskMissing",
                                        error=f"job {jid} has no task {group}")
            elif task.state in (bm.BatchTaskState.ACTIVE, bm.BatchTaskState.PREPARING):
                out[group] = UnitStatus(PENDING)
            elif task.state == bm.BatchTaskState.RUNNING:
                out[group] = UnitStatus(RUNNING)
            elif task.execution_info is not None and task.execution_info.exit_code == 0:
                out[group] = UnitStatus(SUCCEEDED)
            else:
                out[group] = self._failure(jid, group, task)
        return out

    def finish_training(self, refit_id: str) -> None:
        self._seal(refit_job_id(refit_id))

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None  # type: ignore[assignment]


class _errors:
    """Batch SDK errors become BackendError where the SDK is called."""

    def __init__(self, what: str) -> None:
        self.what = what

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind, exc, tb) -> bool:
        if exc is None or isinstance(exc, ResourceExistsError):
            return False
        if isinstance(exc, HttpResponseError) and exc.status_code in (401, 403):
            raise BackendError(
                f"Azure Batch refused the credential on {self.what} (HTTP {exc.status_code}): "
                f"{first_line(exc)}. An account deployed by infra/ allows Entra ID only: leave "
                "FLEETSCORE_BATCH_ACCOUNT_KEY unset (DefaultAzureCredential) and give the "
                "identity a Batch role on the account") from exc
        if isinstance(exc, HttpResponseError | AzureError):
            raise BackendError(f"Azure Batch failed on {self.what}: {first_line(exc)}") from exc
        return False
