"""What ships, and what the deployables install: the wheel holds no benchmark module, the
command line and the report's charts are extras (`cli`, `report`) that the scoring image and the
Functions app neither install nor import, and each entry says which extra it misses in one line
(exit 2) instead of a traceback. The benches run from the source checkout."""

from __future__ import annotations

import os
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest
import setuptools

from fleetscore.__main__ import CLI_EXTRA

ROOT = Path(__file__).resolve().parents[1]
BENCHES = {"bench", "bench_backfill", "bench_report", "bench_sa", "bench_train", "bench_users"}
EXTRAS_ONLY = {"typer", "rich", "matplotlib"}


def _project() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def _pins(lines) -> dict[str, str]:
    pins = {}
    for line in lines:
        line = line.split("#")[0].strip()
        if line:
            name, _, version = line.partition("==")
            pins[name.strip().lower()] = version.strip()
    return pins


def _is_bench(name: str) -> bool:
    return Path(name).name.startswith("bench") or "benchmarks" in Path(name).parts


def _run(code: str, cwd: Path, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=180, cwd=cwd, env=env)


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    done = subprocess.run([sys.executable, "-m", "pip", "wheel", str(ROOT), "--no-deps",
                           "--quiet", "-w", str(out)], capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    (built,) = out.glob("fleetscore-*.whl")
    return built


def test_the_benchmarks_live_outside_the_package():
    assert {p.stem for p in (ROOT / "benchmarks").glob("bench*.py")} == BENCHES
    assert not list((ROOT / "fleetscore").rglob("bench*.py"))
    include = _project()["tool"]["setuptools"]["packages"]["find"]["include"]
    packages = setuptools.find_packages(where=str(ROOT), include=include)
    assert "fleetscore" in packages and "scoring_container" in packages
    assert not [p for p in packages if p.split(".")[0] not in ("fleetscore", "scoring_container")]
    modules = [m for p in packages for m in (ROOT / p.replace(".", "/")).glob("*.py")]
    assert modules and not [m for m in modules if m.name.startswith("bench")]


def test_the_wheel_holds_no_benchmark_module(wheel):
    with zipfile.ZipFile(wheel) as whl:
        names = whl.namelist()
        entry_points = next(whl.read(n).decode() for n in names
                            if n.endswith(".dist-info/entry_points.txt"))
        metadata = next(whl.read(n).decode() for n in names if n.endswith(".dist-info/METADATA"))
    assert "fleetscore/cli/app.py" in names and "scoring_container/__main__.py" in names
    assert [n for n in names if _is_bench(n)] == []
    assert "fleetscore = fleetscore.__main__:main" in entry_points
    # typer, rich and matplotlib come only with an extra.
    requires = [line for line in metadata.splitlines() if line.startswith("Requires-Dist:")]
    for name in EXTRAS_ONLY:
        mine = [r for r in requires if r.split()[1].startswith(f"{name}==")]
        assert mine and all("extra ==" in r for r in mine), mine


def test_bench_from_an_installed_wheel_says_it_runs_from_a_source_checkout(wheel, tmp_path):
    site = tmp_path / "site"
    with zipfile.ZipFile(wheel) as whl:
        whl.extractall(site)
    env = {**os.environ, "PYTHONPATH": str(site)}
    code = ("import sys, fleetscore; sys.argv[0] = 'fleetscore'; print(fleetscore.__file__, "
            "file=sys.stderr); from fleetscore.__main__ import main; main(['bench', "
            "'--sensors', '10'])")
    done = _run(code, tmp_path, env)
    where, *lines = done.stderr.strip().splitlines()
    assert Path(where).is_relative_to(site), where  # the wheel's fleetscore, not the checkout's
    assert done.returncode == 2, done.stderr
    assert len(lines) == 1 and "source checkout" in lines[0], lines
    assert "Traceback" not in done.stdout + done.stderr


def test_bench_in_the_checkout_finds_the_benchmarks_from_any_directory(tmp_path):
    code = ("from fleetscore.cli.perf import _benchmark; "
            "print(_benchmark('bench').__file__); print(_benchmark('bench_sa').__file__)")
    done = _run(code, tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == [str(ROOT / "benchmarks" / "bench.py"),
                                   str(ROOT / "benchmarks" / "bench_sa.py")]


@pytest.mark.parametrize("module", ["benchmarks.bench_backfill", "benchmarks.bench_train",
                                    "benchmarks.bench_report"])
def test_the_benches_run_as_modules_from_the_repository_root(module):
    done = subprocess.run([sys.executable, "-m", module, "--help"], capture_output=True,
                          text=True, timeout=120, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    assert f"python -m {module}" in done.stdout


@pytest.mark.parametrize("missing", ["typer", "rich"])
def test_the_command_without_the_cli_extra_says_which_extra_in_one_line(missing, tmp_path):
    code = (f"import sys; sys.modules[{missing!r}] = None; "
            "from fleetscore.__main__ import main; main(['--help'])")
    done = _run(code, tmp_path)
    assert done.returncode == 2
    assert done.stderr == CLI_EXTRA + "\n" and done.stdout == ""
    assert CLI_EXTRA == ("fleetscore's command line needs the cli extra: "
                         "pip install 'fleetscore[cli]'")


def test_the_command_with_the_cli_extra_runs(tmp_path):
    done = subprocess.run([sys.executable, "-m", "fleetscore", "--version"], capture_output=True,
                          text=True, timeout=120, cwd=tmp_path)
    assert done.returncode == 0 and done.stdout.startswith("fleetscore "), done.stderr
    assert _project()["project"]["scripts"]["fleetscore"] == "fleetscore.__main__:main"


def test_report_without_the_report_extra_says_which_extra_in_one_line(tmp_path):
    from fleetscore.storage import LocalStore

    LocalStore(tmp_path / "store").close()
    out = tmp_path / "report.html"
    code = ("import sys; sys.modules['matplotlib'] = None; "
            "from fleetscore.__main__ import main; "
            f"main(['report', '--store', {str(tmp_path / 'store')!r}, '--out', {str(out)!r}])")
    done = _run(code, tmp_path)
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "fleetscore[report]" in lines[0], lines
    assert "Traceback" not in done.stderr and not out.exists()


def test_the_extras_hold_typer_rich_and_matplotlib_and_the_core_does_not():
    project = _project()["project"]
    core = _pins(project["dependencies"])
    extras = project["optional-dependencies"]
    assert not EXTRAS_ONLY & set(core)
    assert set(_pins(extras["cli"])) == {"typer", "rich"}
    assert set(_pins(extras["report"])) == {"matplotlib"}
    assert "cli,report" in (ROOT / "Makefile").read_text()  # make venv installs them


@pytest.mark.parametrize("requirements", ["requirements.txt",
                                          "scoring_container/requirements.txt"])
def test_the_deployables_install_neither_the_command_line_nor_the_charts(requirements):
    """The Functions app (requirements.txt) and the scoring image."""
    pins = _pins((ROOT / requirements).read_text().splitlines())
    assert pins and not EXTRAS_ONLY & set(pins), sorted(EXTRAS_ONLY & set(pins))
    assert set(_pins(_project()["project"]["dependencies"])) <= set(pins)


def test_the_deployables_import_neither_the_command_line_nor_the_charts(tmp_path):
    """The Functions app and the container's entry, imported with typer, rich and matplotlib
    made unimportable: nothing they import (transitively) needs them, nor the CLI or report."""
    code = ("import sys\n"
            f"sys.path.insert(0, {str(ROOT)!r})\n"
            "for name in ('typer', 'rich', 'matplotlib'):\n"
            "    sys.modules[name] = None\n"
            "import function_app, scoring_container.__main__\n"
            "print(' '.join(m for m in sys.modules if m in ('fleetscore.cli', 'fleetscore.report.html')"
            " or m.startswith('fleetscore.cli.') or m.split('.')[0] in ('benchmarks', 'click')))\n")
    done = _run(code, tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip() == ""
