"""Every registered runner satisfies the runner protocol, by name and by signature; what a runner relies on
before it starts nginx."""

from __future__ import annotations

import importlib
import inspect
import json
import os
import socket
import subprocess
import sys

import pytest

from mipart.daemon.specfiles import remove_stale_specs
from mipart.nginx.files import NginxFiles
from mipart.nginx.launcher import remove_stale_sockets
from mipart.paths import launched_dir
from mipart.runners import RUNNERS, make_runner, records
from mipart.runners.base import Runner

PROTOCOL_METHODS = (
    "list_instances",
    "start",
    "stop",
    "restart",
    "last_exit",
    "ensure_nginx",
    "nginx_running",
    "shutdown",
)


def runner_class(kind: str) -> type:
    module, name = RUNNERS[kind].split(":")
    return getattr(importlib.import_module(module), name)


def test_systemd_and_process_are_registered():
    assert sorted(RUNNERS) == ["process", "systemd"]


@pytest.mark.parametrize("kind", sorted(RUNNERS))
def test_each_runner_is_a_runner(kind, tmp_path):
    runner = make_runner(kind, tmp_path)  # building one touches neither D-Bus nor a process
    assert isinstance(runner, Runner)


@pytest.mark.parametrize("kind", sorted(RUNNERS))
@pytest.mark.parametrize("method", PROTOCOL_METHODS)
def test_each_method_takes_what_the_protocol_says(kind, method):
    expected = inspect.signature(getattr(Runner, method))
    actual = inspect.signature(getattr(runner_class(kind), method))
    assert list(actual.parameters) == list(expected.parameters)
    assert actual.return_annotation == expected.return_annotation


def test_a_server_is_found_by_the_launchers_record_never_by_tags_any_process_can_copy(tmp_path):
    """Any local process may carry our tags (and erase them); the record of a launch is root's, and
    names one process by pid and start time."""
    launched = launched_dir(tmp_path)
    launched.mkdir()
    sleep = [sys.executable, "-c", "import time; time.sleep(30)"]
    tagged = {"MIPART_RUN_DIR": str(tmp_path), "MIPART_INSTANCE": "3"}
    started = [subprocess.Popen(sleep, start_new_session=True, env={**os.environ, **tagged}) for _ in range(3)]
    try:
        assert records.launches(tmp_path) == {}  # tags alone: no instance
        records.write_record(launched, "3.json", started[1].pid, digest="abc", uid=0)
        records.write_record(launched, "4.json", started[2].pid, digest="def", uid=0)
        os.chown(launched / "4.json", 65534, 65534)  # not root's: written by someone else
        (launched / "5.json").write_text(json.dumps({"pid": started[0].pid, "start": 1, "digest": "x", "uid": 0}))
        assert records.launches(tmp_path) == {3: records.Launch(3, started[1].pid, "abc", 0)}  # 5: another start
        started[1].kill()
        started[1].wait()
        assert records.launches(tmp_path) == {}  # its pid may be reused: the start time would differ
    finally:
        for child in started:
            child.kill()
            child.wait()


def test_stale_specs_are_removed(tmp_path):
    (tmp_path / "instances").mkdir()
    (tmp_path / "instances" / "\u00b2.json").write_text("{}")
    (tmp_path / "instances" / "5.json").write_text("{}")
    remove_stale_specs(tmp_path, keep=[])
    assert sorted(p.name for p in (tmp_path / "instances").iterdir()) == ["\u00b2.json"]


def test_a_stale_socket_file_goes_and_a_live_one_stays(tmp_path):
    """A master that inherited its unix socket leaves the file behind when it stops, and nginx cannot
    bind() over it: before a master starts, a socket file of its config that no socket listens on goes."""
    files = NginxFiles(tmp_path)
    live, stale = tmp_path / "svc-live.sock", tmp_path / "svc-stale.sock"
    files.conf.write_text(f"    listen unix:{live};\n    listen unix:{stale};\n")
    listening, closed = socket.socket(socket.AF_UNIX), socket.socket(socket.AF_UNIX)
    try:
        listening.bind(str(live))
        listening.listen()
        closed.bind(str(stale))
        closed.close()  # its file stays, no one listens
        remove_stale_sockets(files)
        assert live.is_socket() and not stale.exists()
    finally:
        listening.close()


def test_the_launcher_never_imports_a_mipart_planted_in_the_agents_working_directory(tmp_path):
    """Issue 20: the process runner ran `python -m mipart exec N` in the agent's working directory,
    whose mipart/ (had anyone planted one) Python would import first, and run as root."""
    from mipart.runners.process import launcher_argv

    planted = tmp_path / "mipart"
    planted.mkdir()
    (planted / "__init__.py").write_text("print('PLANTED')\n")
    (planted / "__main__.py").write_text("print('PLANTED')\n")
    env = {**os.environ, "PYTHONPATH": ""}
    naive = subprocess.run([sys.executable, "-m", "mipart"], cwd=tmp_path, capture_output=True, text=True, env=env)
    assert "PLANTED" in naive.stdout  # what it did before: the test can tell
    ours = subprocess.run(
        [*launcher_argv(0)[:-2], "--help"], cwd=tmp_path, capture_output=True, text=True, env=env, timeout=60
    )
    assert ours.returncode == 0 and "PLANTED" not in ours.stdout and "Usage: " in ours.stdout, ours
