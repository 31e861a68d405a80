"""Shared helpers: run the real `mipart` CLI as a subprocess, as a user would, on simulated hosts."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from mipart.names import RELOAD_CMD_VAR, RUN_DIR_VAR, SERVING_DIR_VAR, SYSFS_ROOT_VAR
from mipart.paths import launched_dir
from mipart.runners import records

REPO = Path(__file__).resolve().parents[1]
AGENT = REPO / "agent"


def mipart(*args: str, env: dict | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    full_env = {**os.environ, "PYTHONPATH": str(AGENT), **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "mipart", *map(str, args)],
        env=full_env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def error_lines(stderr: str) -> list[str]:
    """A CLI run's error and the lines after it (the log lines before it are structlog's)."""
    lines = stderr.strip().splitlines()
    return lines[next(i for i, line in enumerate(lines) if line.startswith("mipart: ")) :]


class SimRoot:
    """A simulated host in `work`: its sysfs tree (work/sys), mipart's run dir (work/run) and serving
    dir (work/serving), and the environment that points the CLI at them, reloading through the
    simulator's own command."""

    def __init__(self, work: Path):
        self.work, self.root, self.run_dir, self.serving_dir = work, work / "sys", work / "run", work / "serving"

    @property
    def env(self) -> dict[str, str]:
        return {
            SYSFS_ROOT_VAR: str(self.root),
            RUN_DIR_VAR: str(self.run_dir),
            SERVING_DIR_VAR: str(self.serving_dir),
            RELOAD_CMD_VAR: f"{sys.executable} -m mipart sim reload {self.root}",
        }

    def run(self, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
        """The CLI on this host; `env` adds to (or overrides) the host's environment."""
        return mipart(*args, env={**self.env, **(env or {})})

    def profile(self, text: str) -> Path:
        """work/profile.yaml holding `version: 1` and then `text`."""
        path = self.work / "profile.yaml"
        path.write_text("version: 1\n" + text)
        return path

    def state(self) -> dict:
        """The simulator's whole state (`mipart sim show --json`): GPUs, modes, write and reload counters."""
        return json.loads(self.run("sim", "show", self.root, "--json").stdout)

    def counters(self) -> dict:
        return self.state()["counters"]


def create_sim(work: Path, *flags: str, **options: str | int) -> SimRoot:
    """`mipart sim create WORK/sys`: options by keyword (model="mi325x", gpus=2, compute="DPX",
    rules="rocm-mi300x"), flags as written ("--bmc-ast"); the CLI's defaults for the rest."""
    words = [word for key, value in options.items() for word in (f"--{key.replace('_', '-')}", str(value))]
    sim = SimRoot(work)
    done = mipart("sim", "create", sim.root, *words, *flags)
    assert done.returncode == 0, done.stderr
    return sim


@pytest.fixture
def sim_env(tmp_path) -> dict[str, str]:
    """Env for the CLI on a simulated 8 x MI300X host in DPX/NPS2 (16 logical GPUs)."""
    return create_sim(tmp_path, model="mi300x", gpus=8, compute="DPX", memory="NPS2").env


@pytest.fixture
def live_pids():
    """PIDs of real processes (sorted) for simulated KFD holders: the kernel, and the
    simulator, forget holders whose process has exited. Killed by PID afterwards."""
    started: list[subprocess.Popen] = []

    def make(count: int) -> list[int]:
        for _ in range(count):
            started.append(subprocess.Popen(["sleep", "300"]))
        return sorted(p.pid for p in started[-count:])

    yield make
    for proc in started:
        proc.kill()
        proc.wait()


OPEN_AND_WAIT = (
    "import os, sys, time; fds = [os.open(p, os.O_RDONLY) for p in sys.argv[1:]]; print('open', flush=True); "
    "time.sleep(300)"
)


@pytest.fixture
def opener(tmp_path, monkeypatch):
    """start(paths, env) runs a process that holds `paths` open (as a GPU server holds its devices), with
    `env` added (e.g. its simulated device cgroup); it is killed by PID afterwards.

    instance=N: it is instance N's server, as the launcher leaves one: in a session of its own, with
    the launcher's record of it in the serving dir (tmp_path/serving, as SimRoot's env says, also
    this process's MIPART_SERVING_DIR)."""
    started: list[subprocess.Popen] = []
    serving = tmp_path / "serving"
    monkeypatch.setenv(SERVING_DIR_VAR, str(serving))

    def start(paths: list[str], env: dict | None = None, instance: int | None = None) -> subprocess.Popen:
        full = {**os.environ, "PYTHONPATH": str(AGENT), **(env or {})}
        argv = [sys.executable, "-c", OPEN_AND_WAIT, *paths]
        proc = subprocess.Popen(argv, env=full, stdout=subprocess.PIPE, text=True, start_new_session=True)
        started.append(proc)
        assert proc.stdout.readline().strip() == "open"
        if instance is not None:
            launched_dir(serving).mkdir(parents=True, exist_ok=True)
            records.write_record(launched_dir(serving), f"{instance}.json", proc.pid, digest="d", uid=os.getuid())
        return proc

    yield start
    for proc in started:
        proc.kill()
        proc.wait()


@pytest.fixture(scope="session")
def ansible_bin(tmp_path_factory):
    """bin/ of a venv of this session's own with the pinned ansible-core and ansible-lint (tests/ansible_tools.py)."""
    from ansible_tools import make_venv

    return make_venv(tmp_path_factory.mktemp("ansible") / "venv")


TIER_FOLDERS = ("nginx", "system", "vllm", "ansible")  # tests/<tier>/ carries the marker of that name; tests/unit/ none


def pytest_collection_modifyitems(config, items):
    """The folder is the tier: a test under tests/nginx/ is marked nginx, and so on."""
    for item in items:
        parts = Path(str(item.fspath)).relative_to(Path(__file__).parent).parts
        if parts[0] in TIER_FOLDERS:
            item.add_marker(getattr(pytest.mark, parts[0]))
