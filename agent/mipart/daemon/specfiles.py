"""The instance files under /run/mipart/instances/: what each launcher reads at start; and the
two directories the launchers write in, under the serving dir (/run/mipart-vllm), root's and
0755: sockets/ (each instance's socket directory, serving.dirs) and launched/ (the launchers'
records, runners.records).

Blocking file I/O: the agent calls these from a worker thread. Nothing here raises on a
damaged run dir (instances/ replaced by a file, a spec path taken by a directory, a full
disk): the first problem is returned in one line, SpecFiles reports it in the status and
tries again with backoff, and the servers that run keep running.
"""

from __future__ import annotations

import stat
import time
from collections.abc import Iterable, Mapping
from pathlib import Path

from mipart.daemon.retry import Backoff, describe
from mipart.daemon.snapshot import AgentStatus
from mipart.envfile import EnvFileError
from mipart.fsutil import write_atomic
from mipart.log import Log
from mipart.paths import instance_env_path, instance_spec_path, launched_dir, sockets_dir
from mipart.serving.spec import InstanceSpec

# A spec and an env file carry the instance's env, which may hold a token: only root (the launcher) reads them.
SPEC_MODE = 0o600
LAUNCHER_DIR_MODE = 0o755  # nginx's workers pass through sockets/; the agent reads launched/


def launcher_dirs(serving: Path) -> tuple[Path, ...]:
    return sockets_dir(serving), launched_dir(serving)


def make_launcher_dirs(serving: Path) -> str:
    """The serving dir's sockets/ and launched/ (root's, 0755); the failure in one line, "" when they are there."""
    try:
        for directory in launcher_dirs(serving):
            directory.mkdir(mode=LAUNCHER_DIR_MODE, parents=True, exist_ok=True)
    except OSError as exc:
        return describe(exc)
    return ""


def instance_files(run_dir: Path, spec: InstanceSpec) -> dict[Path, str]:
    """What the launcher of one instance reads: its spec and, for a container, its env file
    (first: the spec that names it is written after it)."""
    files = {instance_env_path(spec.number, run_dir): spec.env_file_text()} if spec.container else {}
    return {**files, instance_spec_path(spec.number, run_dir): spec.file_text()}


def write_specs(run_dir: Path, specs: Mapping[int, InstanceSpec]) -> str:
    """Each instance's files atomically; one that already says the same is left untouched.

    Returns the first failure ("" when every file is right); the others are still tried.
    """
    problem = ""
    for spec in specs.values():
        try:
            for path, text in instance_files(run_dir, spec).items():
                _write(path, text)
        except (OSError, EnvFileError) as exc:
            problem = problem or (describe(exc) if isinstance(exc, OSError) else f"instance {spec.number}: {exc}")
    return problem


def _write(path: Path, text: str) -> None:
    try:
        if path.read_text() == text:
            if stat.S_IMODE(path.stat().st_mode) != SPEC_MODE:
                path.chmod(SPEC_MODE)  # written by a mipart that made specs world-readable
            return
    except FileNotFoundError:
        pass
    write_atomic(path, text, mode=SPEC_MODE)


def remove_stale_specs(run_dir: Path, keep: Iterable[int]) -> None:
    """Spec files, and env files a killed launcher left, of instances no longer planned."""
    keep = set(keep)
    try:
        paths = [p for pattern in ("*.json", "*.env") for p in (run_dir / "instances").glob(pattern)]
    except OSError:
        return
    for path in paths:
        if path.stem.isascii() and path.stem.isdigit() and int(path.stem) not in keep:
            try:
                path.unlink(missing_ok=True)
            except OSError:
                pass  # a directory in its place: left for a person, it names no instance we run


def restore_missing(run_dir: Path, specs: Mapping[int, InstanceSpec], log: Log) -> str:
    """Someone removed spec files under /run/mipart: write them again. Returns the first failure."""
    missing = [
        n
        for n, spec in specs.items()
        if not instance_spec_path(n, run_dir).is_file()
        or (spec.container and not instance_env_path(n, run_dir).is_file())
    ]
    if not missing:
        return ""
    log.warning("files.missing", specs=",".join(map(str, missing)) or "none", action="rewrite")
    return write_specs(run_dir, specs)


class SpecFiles:
    """The spec files with their failures reported (status.spec_files_error) and retried with backoff."""

    def __init__(self, run_dir: Path, serving: Path, log: Log, status: AgentStatus):
        self.run_dir, self.serving, self.log, self.status = run_dir, serving, log, status
        self.retry = Backoff()

    def write(self, specs: Mapping[int, InstanceSpec]) -> bool:
        return self._outcome(make_launcher_dirs(self.serving) or write_specs(self.run_dir, specs))

    def restore(self, specs: Mapping[int, InstanceSpec]) -> None:
        """Periodic: rewrite missing specs, or all of them when the last write failed and is due again."""
        if self.retry.error:
            if self.retry.due(time.monotonic()):
                self.write(specs)
            return
        self._outcome(make_launcher_dirs(self.serving) or restore_missing(self.run_dir, specs, self.log))

    def remove_stale(self, keep: Iterable[int]) -> None:
        remove_stale_specs(self.run_dir, keep)

    def _outcome(self, problem: str) -> bool:
        if not problem:
            if self.retry.error:
                self.log.info("files.ok", dir=str(self.run_dir / "instances"))
            self.retry.succeeded()
            self.status.spec_files_error = ""
            return True
        action = self.retry.failure(problem, time.monotonic(), "running instances keep serving")
        self.status.spec_files_error = problem
        if action:
            self.log.error("files.write_failed", reason=problem, action=action)
        return False
