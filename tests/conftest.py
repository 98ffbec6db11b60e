"""Shared fixtures: stores (a directory and a real Azurite), reference data, trained stores."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from fleetscore.runs.engine import ENGINE
from fleetscore.settings import Settings
from fleetscore.storage import LocalStore, Store

ROOT = Path(__file__).resolve().parents[1]
AZURITE = ROOT / "node_modules" / ".bin" / "azurite"
REFDATA = ROOT.parent / "shared" / "refdata" / "sensor_data.csv"
# The well-known development account of the storage emulators: public, not a secret.
DEV_ACCOUNT_KEY = (
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _wait_listening(port: int, proc: subprocess.Popen, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"Azurite exited with {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"Azurite did not listen on 127.0.0.1:{port} within {timeout} s")


class Azurite:
    def __init__(self) -> None:
        self.blob_port, self.queue_port, self.table_port = _free_port(), _free_port(), _free_port()
        self.proc: subprocess.Popen | None = None

    @property
    def connection_string(self) -> str:
        return (
            "DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;"
            f"AccountKey={DEV_ACCOUNT_KEY};"
            f"BlobEndpoint=http://127.0.0.1:{self.blob_port}/devstoreaccount1;"
            f"QueueEndpoint=http://127.0.0.1:{self.queue_port}/devstoreaccount1;"
            f"TableEndpoint=http://127.0.0.1:{self.table_port}/devstoreaccount1;"
        )

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [str(AZURITE), "--inMemoryPersistence", "--skipApiVersionCheck", "--disableTelemetry",
             "--silent", "--blobHost", "127.0.0.1", "--blobPort", str(self.blob_port),
             "--queueHost", "127.0.0.1", "--queuePort", str(self.queue_port),
             "--tableHost", "127.0.0.1", "--tablePort", str(self.table_port)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
        )
        _wait_listening(self.blob_port, self.proc)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()


@pytest.fixture(scope="session")
def azurite() -> Iterator[Azurite]:
    if not AZURITE.exists():
        pytest.fail(f"Azurite is not installed at {AZURITE}: run `make test`, which installs it")
    emulator = Azurite()
    emulator.start()
    yield emulator
    emulator.stop()


@pytest.fixture
def blob_settings(azurite: Azurite) -> Settings:
    return Settings(storage_connection_string=azurite.connection_string)


@pytest.fixture
def blob_store(azurite: Azurite, blob_settings: Settings) -> Iterator[Store]:
    from fleetscore.storage.blob import BlobStore

    container = f"t{uuid.uuid4().hex[:20]}"
    store = BlobStore(container, connection_string=azurite.connection_string)
    yield store
    store.close()


@pytest.fixture
def local_store(tmp_path: Path) -> LocalStore:
    return LocalStore(tmp_path / "store")


@pytest.fixture(params=["local", "blob"])
def store(request) -> Store:
    """The same test on every Store: a directory and Azure Blob (Azurite)."""
    return request.getfixturevalue(f"{request.param}_store")


@pytest.fixture
def refdata() -> Path:
    if not REFDATA.exists():
        pytest.skip(f"reference data not found at {REFDATA} (../shared/refdata is absent)")
    return REFDATA


def write_readings(path: Path, rows: list[tuple], header: str = "TS,Device,Tag,Value") -> Path:
    path.write_text(header + "\n" + "".join(",".join(map(str, r)) + "\n" for r in rows))
    return path


def minute_readings(device: str, tag: str, start: str, minutes: int, *, seed: int = 0,
                    level: float = 10.0, per_minute: int = 4) -> list[tuple]:
    """Readings every 60/per_minute seconds, starting a few seconds after ``start`` (UTC)."""
    from datetime import datetime, timedelta

    rng = np.random.default_rng(seed)
    t0 = datetime.fromisoformat(start)
    step = 60 // per_minute
    rows = []
    for i in range(minutes * per_minute):
        ts = t0 + timedelta(seconds=5 + i * step)
        rows.append((ts.strftime("%Y-%m-%d %H:%M:%S.000"), device, tag,
                     round(level + rng.normal(0, 1), 3)))
    return rows


@pytest.fixture
def fleet_csv(tmp_path: Path) -> Path:
    """Three sensors, three hours from 2024-03-01T00, readings every 15 s."""
    rows = []
    for i, (device, tag) in enumerate([("1", "1"), ("1", "2"), ("dev_a", "t.x")]):
        rows += minute_readings(device, tag, "2024-03-01 00:00:00", 180, seed=i, level=10 * (i + 1))
    rows.sort()
    return write_readings(tmp_path / "fleet.csv", rows)


@pytest.fixture
def trained_store(local_store: LocalStore, fleet_csv: Path) -> LocalStore:
    from fleetscore.core.hours import Hour
    from fleetscore.data.ingest import ingest_file
    from fleetscore.model.training import train

    ingest_file(local_store, fleet_csv)
    train(local_store, estimator="ocsvm", until=Hour.parse("2024-03-01T00"))
    return local_store


def folded_predictions(store: Store, runs):
    """The report's fold of the runs' visible predictions (``report._fold_predictions``),
    collected into one table: (the table or None, predictions per run)."""
    import pyarrow as pa

    from fleetscore.report.data import _fold_predictions

    tables: list = []
    rows = _fold_predictions(store, runs, tables.append)
    present = [t for t in tables if t.num_rows]
    return (pa.concat_tables(present) if present else None), rows


def copy_tree(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


# --- the Functions app ----------------------------------------------------------------------


@pytest.fixture(scope="session")
def app_functions() -> dict:
    """The app's functions as the host indexes them (get_functions() works once per app)."""
    import function_app

    return {f.get_function_name(): f for f in function_app.app.get_functions()}


@pytest.fixture
def orchestrator_functions(app_functions) -> dict:
    return {name: app_functions[name].get_user_function().orchestrator_function
            for name in ("score_window", "score_units")}


@pytest.fixture
def functions_env(monkeypatch, azurite):
    """The app's settings pointing at a fresh container on Azurite; clients rebuilt per test."""
    from fleetscore import runtime

    container = f"f{uuid.uuid4().hex[:20]}"
    monkeypatch.setenv("FLEETSCORE_STORE", f"az://{container}")
    monkeypatch.setenv("FLEETSCORE_STORAGE_CONNECTION_STRING", azurite.connection_string)
    monkeypatch.setenv("FLEETSCORE_BACKEND", "local")
    monkeypatch.setenv("FLEETSCORE_POLL_SECONDS", "30")
    runtime.reset()
    yield runtime
    runtime.reset()


@pytest.fixture
def durable_fake():
    from tests.functions.durable_fake import DurableFake

    with DurableFake() as fake:
        yield fake


@pytest.fixture(scope="session")
def run_async():
    """One event loop for the session: the Durable SDK keeps one aiohttp session per process."""
    import asyncio

    from azure.durable_functions.models.utils import http_utils

    loop = asyncio.new_event_loop()
    yield loop.run_until_complete
    loop.run_until_complete(http_utils._close_session())
    loop.close()


# --- a fleet large enough for faults to land mid-run ----------------------------------------


def demo_readings(base: Path, *, sensors: int, hours: int, seed: int):
    """A synthetic fleet (fleetscore.cli.demo) and its readings CSV in ``base``."""
    from fleetscore.data.synthetic import make_fleet, write_readings_csv

    fleet = make_fleet(sensors=sensors, hours=hours, seed=seed)
    readings = base / "readings.csv"
    write_readings_csv(fleet.readings, readings)
    return fleet, readings


@pytest.fixture(scope="session")
def fleet_template(tmp_path_factory) -> dict:
    """120 sensors, trained on 2026-01-05T00, scored for 2026-01-05T01 by a clean run."""
    from fleetscore.compute.local import SequentialBackend
    from fleetscore.data.ingest import ingest_file
    from fleetscore.model.training import train
    from fleetscore.runs.lifecycle import run_hour

    base = tmp_path_factory.mktemp("fleet")
    fleet, readings = demo_readings(base, sensors=120, hours=2, seed=3)
    template = base / "template"
    store = LocalStore(template)
    ingest_file(store, readings)
    train(store, estimator="ocsvm", until=fleet.first)
    clean_dir = base / "clean"
    shutil.copytree(template, clean_dir)
    clean = LocalStore(clean_dir)
    hour = fleet.first + 1
    run_hour(clean, hour, SequentialBackend(clean, ENGINE), unit_size=30)
    return {"template": template, "readings": readings, "hour": hour,
            "clean": predictions_snapshot(clean_dir)}


def predictions_snapshot(store_dir: Path) -> list[bytes]:
    """Every predictions row in the store's predictions folder, sorted: file names carry run
    ids, so runs are compared by their rows; a duplicated row shows up twice."""
    return sorted(line for p in (Path(store_dir) / "predictions").rglob("*.csv")
                  for line in p.read_bytes().splitlines()[1:])


@pytest.fixture
def fleet_store(fleet_template, tmp_path) -> LocalStore:
    return LocalStore(copy_tree(fleet_template["template"], tmp_path / "fleet"))


# --- the scoring image, built with podman and run as Azure Batch runs it --------------------
# The recipe is ../shared/notes/container-testing.md: podman with runc and lowered ulimits, a
# Debian bookworm base made with debootstrap (no registry is reachable), the project's
# Dockerfile built on it through its BASE_IMAGE build argument. Everything slow is cached: the
# base rootfs under CONTAINER_CACHE keyed by its recipe, the dependency layer in podman's layer
# cache keyed by the Dockerfile and requirements, the image itself by the hash of every input.

CONTAINER_CACHE = Path(os.environ.get("FLEETSCORE_CONTAINER_CACHE",
                                      "/var/tmp/fleetscore-container-cache"))
CONTAINER_PACKAGES = ["podman", "runc", "debootstrap"]
CONTAINERS_CONF = """\
[containers]
default_ulimits = ["nofile=20000:20000", "nproc=32768:32768"]
[engine]
runtime = "runc"
"""
BASE_SUITE = "bookworm"
# What the official python:3.11-slim gives: python and pip on PATH, ca-certificates, venv.
BASE_PACKAGES = ["python3", "python3-venv", "python3-pip", "ca-certificates", "python-is-python3"]
IMAGE_INPUTS = ["scoring_container", "fleetscore", "pyproject.toml", "README.md", ".dockerignore"]


def containers_unavailable(reason: str):
    """Skip where containers cannot run at all; under CI=true that is a failure, never a skip."""
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"the container test cannot run in CI: {reason}", pytrace=False)
    pytest.skip(f"containers cannot run here: {reason}")


class Podman:
    def __init__(self, cache: Path) -> None:
        self.cache = cache
        self.conf = cache / "containers.conf"
        self.env = {**os.environ, "CONTAINERS_CONF": str(self.conf)}

    def __call__(self, *args: str, timeout: float = 600, check: bool = True,
                 **kwargs) -> subprocess.CompletedProcess:
        proc = subprocess.run(["podman", *args], env=self.env, capture_output=True, text=True,
                              timeout=timeout, **kwargs)
        if check and proc.returncode != 0:
            raise RuntimeError(f"podman {' '.join(args[:2])} exited {proc.returncode}: "
                               f"{(proc.stderr or proc.stdout)[-3000:]}")
        return proc

    def image_exists(self, tag: str) -> bool:
        return self("image", "exists", tag, check=False).returncode == 0


def _tail(text: str, n: int = 1500) -> str:
    return text.strip()[-n:]


def _install_container_tools() -> None:
    missing = [tool for tool in CONTAINER_PACKAGES if shutil.which(tool) is None]
    if not missing:
        return
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        containers_unavailable(f"{', '.join(missing)} missing, and installing them needs root "
                               "and apt-get (`apt-get install -y podman runc debootstrap`)")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for cmd in (["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq", *CONTAINER_PACKAGES]):
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
        if proc.returncode != 0:
            containers_unavailable(f"`{' '.join(cmd)}` failed: {_tail(proc.stderr)}")


def _debian_mirror() -> str:
    """The Debian mirror apt on this machine already uses (read at run time, never written down)."""
    import re

    sources = sorted(Path("/etc/apt/sources.list.d").glob("*.sources"))
    for path in sources:
        for stanza in path.read_text().split("\n\n"):
            uris = re.search(r"^URIs:\s*(\S+)", stanza, re.M)
            suites = re.search(r"^Suites:\s*(.+)$", stanza, re.M)
            if uris and suites and BASE_SUITE in suites.group(1).split():
                return uris.group(1)
    for path in [Path("/etc/apt/sources.list"), *Path("/etc/apt/sources.list.d").glob("*.list")]:
        if path.exists():
            for line in path.read_text().splitlines():
                parts = line.split("#", 1)[0].split()
                if len(parts) >= 3 and parts[0] == "deb" and BASE_SUITE in parts[2:3]:
                    return next(p for p in parts[1:] if not p.startswith("["))
    containers_unavailable(f"no Debian {BASE_SUITE} mirror in /etc/apt/sources.list(.d)")
    raise AssertionError("unreachable")


def _base_image(podman: Podman) -> str:
    """A stand-in for python:3.11-slim built from Debian packages (no registry is reachable)."""
    import hashlib

    recipe = f"{BASE_SUITE} minbase {' '.join(BASE_PACKAGES)} no-externally-managed v1"
    key = hashlib.sha256(recipe.encode()).hexdigest()[:12]
    tag = f"localhost/fleetscore-pybase:{BASE_SUITE}-{key}"
    if podman.image_exists(tag):
        return tag
    tarball = podman.cache / f"base-{key}.tar"
    if not tarball.exists():
        rootfs = podman.cache / f"rootfs-{key}"
        shutil.rmtree(rootfs, ignore_errors=True)
        proc = subprocess.run(["debootstrap", "--variant=minbase", BASE_SUITE, str(rootfs),
                               _debian_mirror()], capture_output=True, text=True, timeout=900)
        if proc.returncode != 0:
            raise RuntimeError(f"debootstrap failed: {_tail(proc.stdout + proc.stderr)}")
        shutil.copy("/etc/resolv.conf", rootfs / "etc" / "resolv.conf")
        env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "DEBIAN_FRONTEND": "noninteractive",
               "LANG": "C.UTF-8"}
        proc = subprocess.run(
            ["chroot", str(rootfs), "sh", "-c",
             "apt-get install -y -qq --no-install-recommends " + " ".join(BASE_PACKAGES)
             + " && apt-get clean && rm -rf /var/lib/apt/lists/*"
             # As in the official Python images, pip may install into the base's Python.
             + " && rm -f /usr/lib/python3*/EXTERNALLY-MANAGED"],
            capture_output=True, text=True, env=env, timeout=900)
        if proc.returncode != 0:
            raise RuntimeError(f"installing Python in the base failed: {_tail(proc.stdout + proc.stderr)}")
        (rootfs / "etc" / "resolv.conf").unlink()
        partial = tarball.with_suffix(".partial")
        subprocess.run(["tar", "-C", str(rootfs), "-cf", str(partial), "."], check=True, timeout=600)
        partial.rename(tarball)
        shutil.rmtree(rootfs, ignore_errors=True)
    podman("import", "--change", "ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
           "--change", "CMD [\"python3\"]", str(tarball), tag)
    return tag


def image_inputs_key() -> str:
    """Hash of everything the image is built from: a changed source file means a new image."""
    import hashlib

    digest = hashlib.sha256()
    for name in IMAGE_INPUTS:
        path = ROOT / name
        files = sorted(p for p in path.rglob("*") if p.is_file() and "__pycache__" not in p.parts) \
            if path.is_dir() else [path]
        for f in files:
            digest.update(str(f.relative_to(ROOT)).encode() + b"\0" + f.read_bytes() + b"\0")
    return digest.hexdigest()[:16]


def build_scoring_image() -> tuple[Podman, str]:
    import fcntl

    _install_container_tools()
    CONTAINER_CACHE.mkdir(parents=True, exist_ok=True)
    podman = Podman(CONTAINER_CACHE)
    podman.conf.write_text(CONTAINERS_CONF)
    info = podman("info", check=False, timeout=120)
    if info.returncode != 0:
        containers_unavailable(f"`podman info` fails: {_tail(info.stderr, 500)}")
    tag = f"localhost/fleetscore-scoring:test-{image_inputs_key()}"
    with open(CONTAINER_CACHE / "build.lock", "w") as lock:  # one builder at a time
        fcntl.flock(lock, fcntl.LOCK_EX)
        if podman.image_exists(tag):
            return podman, tag
        base = _base_image(podman)
        probe = podman("run", "--rm", "--network", "host", base, "python", "-c", "print('ok')",
                       check=False, timeout=120)
        if probe.returncode != 0 or probe.stdout.strip() != "ok":
            containers_unavailable(f"podman cannot start a container: {_tail(probe.stderr, 500)}")
        ca_bundle = os.environ.get("SSL_CERT_FILE") or "/etc/ssl/certs/ca-certificates.crt"
        # pip in the build trusts what the host trusts (outbound TLS may be re-signed locally).
        podman("build", "--network", "host",
               "-v", f"{ca_bundle}:/etc/ssl/certs/ca-certificates.crt:ro",
               "--build-arg", f"BASE_IMAGE={base}",
               "-f", str(ROOT / "scoring_container" / "Dockerfile"), "-t", tag, str(ROOT),
               timeout=1500)
    return podman, tag


@pytest.fixture(scope="session")
def scoring_image() -> tuple[Podman, str]:
    """(podman, image tag): the project's scoring image, built from its Dockerfile."""
    return build_scoring_image()


def pytest_configure(config):
    config.addinivalue_line(
        "markers", "container: builds and runs the scoring image with podman (make container-test)")


# --- the command line -----------------------------------------------------------------------


@pytest.fixture
def cli(capsys):
    """Run `fleetscore ARGS` in this process: (exit code, stdout, stderr)."""
    from fleetscore.cli.app import main

    def run(*args: str) -> tuple[int, str, str]:
        with pytest.raises(SystemExit) as exit_info:
            main(list(args))
        captured = capsys.readouterr()
        return exit_info.value.code or 0, captured.out, captured.err
    return run


def windows_by_hour(partials):
    """The final windows of partial aggregates, per hour, each sorted by Device, Tag and
    window end (``windows.finish_windows``, grouped as a day's or an hour's part holds them)."""
    import numpy as np
    import pyarrow as pa

    from fleetscore.core.hours import Hour
    from fleetscore.data.windows import finish_windows

    table, hours = finish_windows(partials)
    return {Hour(int(h)): table.filter(pa.array(hours == h)).sort_by(
                [("Device", "ascending"), ("Tag", "ascending"), ("WindowEnd", "ascending")])
            for h in np.unique(hours)}


@pytest.fixture
def webhook():
    """A webhook receiver: a real HTTP server on localhost (tests/alerts/webhook.py)."""
    from tests.alerts.webhook import Webhook

    server = Webhook().start()
    yield server
    server.stop()
