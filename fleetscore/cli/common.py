"""What the ``fleetscore`` commands share: the consoles, the --store and --window options, the
store a command opens, and the progress bar. Below every command module, so none of them
imports another (nor ``cli.app``, which imports them all to register them)."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from fleetscore.core.defaults import DEFAULT_GAMMA, DEFAULT_NU
from fleetscore.errors import UsageError
from fleetscore.settings import Settings


def _console(**kw) -> Console:
    console = Console(highlight=False, soft_wrap=True, **kw)
    # Piped or captured output has no width: keep tables on one line per row for grep and logs.
    return console if console.is_terminal else Console(highlight=False, soft_wrap=True, width=200, **kw)


out = _console()
err = _console(stderr=True)

StoreOpt = Annotated[str | None, typer.Option(
    "--store", "-s", help="Store: a directory, or az://CONTAINER. Default: $FLEETSCORE_STORE "
    "or ./fleetscore-data.")]
WindowOpt = Annotated[str | None, typer.Option("--window", "-w", help="Hour YYYY-MM-DDTHH (UTC).")]


def load_settings() -> Settings:
    return Settings.from_env()


def open_store(spec: str | None, settings: Settings, *, create: bool = False):
    """The store; only commands that bring data in (ingest, models import, demo) create one,
    so a mistyped --store is refused instead of read as an empty store."""
    from fleetscore.storage import open_store as open_spec

    return open_spec(spec or settings.store, settings, create=create)


def plural(n: int, word: str) -> str:
    return word if n == 1 else f"{word}s"


def new_local_store_dir(spec: str) -> Path | None:
    """A directory store this command is about to create (None for one that exists or a blob
    store): a failed import removes it again rather than leave an empty store behind."""
    if "://" in spec:
        return None
    path = Path(spec)
    return None if path.exists() else path


def discard_if_empty(new_dir: Path | None, st) -> None:
    """After a command that created the store failed: remove it if it holds nothing yet."""
    if new_dir is not None:
        _remove_empty_tree(new_dir)
    else:
        st.remove_if_empty()  # a blob container this command created, still empty


def _remove_empty_tree(path: Path) -> None:
    # Bottom-up, and only directories without a file: never deletes anything written but the
    # store's own bookkeeping (the marker that makes a directory a store, its lock file), when
    # they are the only files there.
    from fleetscore.storage.local import BOOKKEEPING

    if not path.is_dir():
        return
    files = [p for p in path.rglob("*") if not p.is_dir()]
    if files and {p.relative_to(path).as_posix() for p in files} <= BOOKKEEPING:
        for file in files:
            file.unlink()
    for folder in sorted((p for p in path.rglob("*") if p.is_dir()), key=lambda p: -len(p.parts)):
        with contextlib.suppress(OSError):
            folder.rmdir()
    with contextlib.suppress(OSError):
        path.rmdir()


def _count_column():
    from rich.progress import ProgressColumn
    from rich.text import Text

    class Count(ProgressColumn):
        def render(self, task) -> Text:
            if task.total is None:
                return Text("")
            return Text(f"{int(task.completed):,}/{int(task.total):,}", style="progress.download")

    return Count()


class ProgressBar:
    """A rich progress bar on a terminal; silent otherwise (logs and CI stay clean).

    Until the work reports a total the bar pulses and shows the time elapsed, never "0/?"."""

    def __init__(self, label: str) -> None:
        self.label = label
        self._bar = None

    def __enter__(self):
        if not err.is_terminal:
            return None
        from rich.progress import BarColumn, Progress, TimeElapsedColumn

        self._bar = Progress("[progress.description]{task.description}", BarColumn(),
                             _count_column(), TimeElapsedColumn(), console=err, transient=True)
        self._bar.start()
        task = self._bar.add_task(self.label, total=None)

        def update(done: int, total: int) -> None:
            self._bar.update(task, completed=done, total=total)

        return update

    def __exit__(self, *exc) -> None:
        if self._bar is not None:
            self._bar.stop()


def rebuild_bank_line(st) -> str:
    """Recompile the bank from the champions and the challenger bank from the challengers;
    a line saying what they hold."""
    from fleetscore.model.bank import rebuild_bank

    stats = rebuild_bank(st)
    line = (f"model bank: {stats.compiled} of {stats.sensors} models compiled "
            f"({stats.shards_written} shards written, {stats.shards_kept} kept)")
    # Models the bank does not reproduce exactly are scored by scikit-learn: say how many, why.
    left = "; ".join(f"{count} {reason}" for reason, count in stats.left)
    line = f"{line}; left to scikit-learn: {left}" if left else line
    shadow = challenger_bank_line(st)
    return f"{line}\n{shadow}" if shadow else line


def challenger_bank_line(st) -> str:
    """Recompile the challenger bank; a line saying what it holds ("" without challengers)."""
    from fleetscore.model.challengers import rebuild_challengers

    stats = rebuild_challengers(st)
    if not stats.challengers:
        return ""
    return (f"challenger bank: {stats.compiled:,} of {stats.challengers:,} challengers compiled; "
            "runs score them beside the champions into shadow/")


def estimator_options(estimator: str, nu: float | None, gamma: float | None
                      ) -> tuple[float, float]:
    """--nu and --gamma, checked (defaults filled in); a usage error when they come with an
    estimator that has neither, or for an unknown estimator."""
    from fleetscore.model.estimators import NAMES

    if estimator not in NAMES:
        raise UsageError(f"invalid --estimator {estimator!r}: expected one of {', '.join(NAMES)}")
    if estimator != "ocsvm" and (nu is not None or gamma is not None):
        raise UsageError(f"--nu and --gamma are the ocsvm's; --estimator {estimator} takes neither")
    nu = DEFAULT_NU if nu is None else nu
    gamma = DEFAULT_GAMMA if gamma is None else gamma
    if not 0 < nu <= 1:
        raise UsageError(f"invalid --nu {nu}: expected 0 < nu <= 1")
    if gamma <= 0:
        raise UsageError(f"invalid --gamma {gamma}: expected > 0")
    return nu, gamma
