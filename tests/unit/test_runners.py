"""Every registered runner satisfies the runner protocol, by name and by signature; what a runner relies on
before it starts nginx."""

from __future__ import annotations

import importlib
import inspect
import os
import socket
import subprocess
import sys
import time

import pytest

from mipart.daemon.specfiles import remove_stale_specs
from mipart.nginx.files import NginxFiles
from mipart.nginx.launcher import remove_stale_sockets
from mipart.runners import RUNNERS, make_runner, procfs
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


def test_a_tag_that_is_not_ascii_digits_is_not_an_instance(tmp_path):
    """Any local process may carry our tags; '²'.isdigit() is True and int('²') raises."""
    started = [
        subprocess.Popen(
            [sys.executable, "-c", "import time; time.sleep(30)"],
            start_new_session=True,
            env={**os.environ, "MIPART_RUN_DIR": str(tmp_path), "MIPART_INSTANCE": tag},
        )
        for tag in ("\u00b2", "3")
    ]
    try:

        def found() -> dict:
            return procfs.tagged_servers(str(tmp_path))

        deadline = time.monotonic() + 10
        while found() != {3: started[1].pid} and time.monotonic() < deadline:
            time.sleep(0.05)  # the environment is in /proc once the interpreter runs
        assert found() == {3: started[1].pid}
    finally:
        for child in started:
            child.kill()
            child.wait()
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
