"""The ``fleetscore`` command's entry (and ``python -m fleetscore``).

The command line is typer and rich, the ``cli`` extra: the scoring image and the Functions
app do without them. Without them the command says which extra to install, in one line, and
exits 2 (bad usage: nothing done) instead of a traceback.
"""

from __future__ import annotations

import sys
from importlib.util import find_spec

CLI_EXTRA = "fleetscore's command line needs the cli extra: pip install 'fleetscore[cli]'"


def main(argv: list[str] | None = None) -> None:
    if any(find_spec(name) is None for name in ("typer", "rich")):
        sys.stderr.write(CLI_EXTRA + "\n")
        sys.exit(2)
    from fleetscore.cli.app import main as cli_main

    cli_main(argv)


if __name__ == "__main__":
    main()
