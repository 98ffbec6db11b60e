"""What the command line's tests share (the fixture `cli`, which runs the command in this
process, is tests/conftest.py's): the command run as a user runs it, in a process of its own
with plain output at a given width, and the one-line usage error it must print."""

from __future__ import annotations

import os
import subprocess
import sys


def fleetscore(*args: str, cwd=None, columns: int = 100) -> subprocess.CompletedProcess:
    env = {**os.environ, "COLUMNS": str(columns), "NO_COLOR": "1"}
    env.pop("FLEETSCORE_DEBUG", None)
    return subprocess.run([sys.executable, "-m", "fleetscore", *args], capture_output=True,
                          text=True, timeout=120, cwd=cwd, env=env)


def one_line_usage_error(proc: subprocess.CompletedProcess) -> str:
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout
    assert "internal error" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    return lines[0]

