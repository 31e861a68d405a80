"""The agent never dies of input: hostile profiles on SIGHUP, idle and slow connections to its API,
running out of file descriptors. The real agent, real nginx and fake engines (tests/serving.py)."""

from __future__ import annotations

import os
import resource
import socket
import time

import pytest
from serving import ServingHost

pytestmark = pytest.mark.nginx

GOOD_ARGS = "    args: []"
# The classes of profile that crashed `mipart validate` (and so the agent, on SIGHUP) or hung it,
# each as an edit of the serving profile: (name, line replaced, replacement, words of the error).
CRASHERS = [
    ("null-list-item", GOOD_ARGS, "    args: [null]", "args[0] is empty"),
    ("empty-required-value", "    model: test/fake-llm", "    model:", "model is empty"),
    (
        "non-ascii-port",
        GOOD_ARGS,
        '    args: []\n  other: {model: a/b, listen: "127.0.0.1:٨٠٤٠", partitions: [0]}',
        "is not a number",
    ),
    ("huge-number", GOOD_ARGS, "    args: []\n    max_concurrency: " + "9" * 5000, "far too large"),
    ("impossible-date", GOOD_ARGS, "    args: []\n    tensor_parallel: 2001-13-45", "not a date"),
    ("bad-tagged-int", GOOD_ARGS, '    args: []\n    tensor_parallel: !!int "abc"', "not a valid int"),
    ("deep-nesting", GOOD_ARGS, "    args: " + "[" * 100_000, "nested more than"),
    ("huge-duration", GOOD_ARGS, "    args: []\n    request_timeout: " + "9" * 400 + "s", "far too long"),
    ("env-over-arg-limit", GOOD_ARGS, '    args: []\n    env: {A: "' + "x" * 140_000 + '"}', "MAX_ARG_STRLEN"),
]
PATH_CRASHERS = ["fifo", "dev-zero", "directory"]


@pytest.fixture
def serving_host(tmp_path):
    serving = ServingHost(tmp_path, compute="SPX", memory="NPS1", instances=8)
    yield serving
    serving.close()


def profile_error(host) -> str:
    return host.api_get("/v1/status")["profile_error"]


def hup_and_wait_for_error(host, words: str) -> str:
    host.hup()
    host.wait_for(lambda: words in profile_error(host), timeout=20, what=f"profile_error with {words!r}")
    return profile_error(host)


def test_every_crash_class_profile_on_sighup_is_refused_and_serving_goes_on(serving_host):
    serving_host.start_agent()
    serving_host.wait_ready()
    good = serving_host.profile.read_text()
    pids, conf = serving_host.instance_pids(), serving_host.nginx_conf()
    for name, old, new, words in CRASHERS:
        assert old in good, name
        serving_host.profile.write_text(good.replace(old, new, 1))
        error = hup_and_wait_for_error(serving_host, words)
        assert error.startswith(f"{serving_host.profile}:"), (name, error)
        assert serving_host.agent.poll() is None, name
        assert serving_host.backend_of_one_request()[0] == 200, name
    serving_host.profile.unlink()
    for kind in PATH_CRASHERS:  # the profile path itself replaced by something that is not a file
        if kind == "fifo":
            os.mkfifo(serving_host.profile)
        elif kind == "dev-zero":
            serving_host.profile.symlink_to("/dev/zero")
        else:
            serving_host.profile.mkdir()
        hup_and_wait_for_error(serving_host, "not a regular file" if kind != "directory" else "is a directory")
        assert serving_host.agent.poll() is None, kind
        assert serving_host.backend_of_one_request()[0] == 200, kind
        serving_host.profile.rmdir() if kind == "directory" else serving_host.profile.unlink()
    serving_host.profile.write_text(good)
    serving_host.hup()
    serving_host.wait_for(lambda: profile_error(serving_host) == "", timeout=20, what="the good profile taken back")
    assert serving_host.instance_pids() == pids and serving_host.nginx_conf() == conf  # nothing that ran was touched
    assert "Traceback" not in serving_host.log_text()


def open_idle(port: int, count: int) -> list[socket.socket]:
    socks = []
    try:
        for _ in range(count):
            socks.append(socket.create_connection(("127.0.0.1", port), timeout=10))
    except BaseException:
        close_all(socks)
        raise
    return socks


def close_all(socks: list[socket.socket]) -> None:
    for sock in socks:
        sock.close()


def healthz(host) -> bool:
    try:
        return host.api_get("/healthz", timeout=5) == {"status": "ok"}
    except OSError:
        return False


def limit_files(pid: int, soft: int) -> None:
    """The agent's soft limit on open files, as systemd's default (1024) or lower."""
    _, hard = resource.prlimit(pid, resource.RLIMIT_NOFILE)
    resource.prlimit(pid, resource.RLIMIT_NOFILE, (soft, hard))


def raise_own_limit(needed: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < needed:
        if hard != resource.RLIM_INFINITY and hard < needed:
            pytest.skip(f"this test needs {needed} open files, the hard limit is {hard}")
        resource.setrlimit(resource.RLIMIT_NOFILE, (needed, hard))


def test_1100_idle_connections_neither_kill_the_agent_nor_lock_out_its_api(serving_host):
    raise_own_limit(4096)
    serving_host.start_agent()
    serving_host.wait_ready()
    limit_files(serving_host.agent.pid, 1024)  # systemd's default soft limit
    socks = open_idle(serving_host.api_port, 1100)
    try:
        assert serving_host.agent.poll() is None
        assert healthz(serving_host)  # the longest-idle connection made room for this one
        assert serving_host.backend_of_one_request()[0] == 200
        files = len(os.listdir(f"/proc/{serving_host.agent.pid}/fd"))
        assert files < 1024 - 100, files  # the API holds a bounded number, whatever clients open
    finally:
        close_all(socks)
    serving_host.wait_for(lambda: healthz(serving_host), timeout=20, what="/healthz after the connections closed")
    assert serving_host.agent.poll() is None


def test_a_connection_that_never_finishes_its_request_is_closed(serving_host):
    serving_host.start_agent()
    serving_host.wait_for(lambda: healthz(serving_host), timeout=60, what="the API")
    with (
        socket.create_connection(("127.0.0.1", serving_host.api_port), timeout=10) as silent,
        socket.create_connection(("127.0.0.1", serving_host.api_port), timeout=10) as slow,
    ):
        slow.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")  # headers never end
        silent.settimeout(60)
        slow.settimeout(60)
        assert silent.recv(100) == b""  # closed by the agent (a hang would raise TimeoutError)
        assert slow.recv(100) == b""
    assert healthz(serving_host)


def test_out_of_file_descriptors_the_agent_backs_off_and_serves_again(serving_host):
    serving_host.start_agent()
    serving_host.wait_ready()
    in_use = len(os.listdir(f"/proc/{serving_host.agent.pid}/fd"))
    limit_files(serving_host.agent.pid, in_use + 20)  # the API's cap (a quarter of 1024 or more) is now out of reach
    socks = []
    try:
        for _ in range(60):
            try:
                socks.append(socket.create_connection(("127.0.0.1", serving_host.api_port), timeout=2))
            except OSError:
                break  # the backlog is full while accept() fails with EMFILE
        time.sleep(1.5)  # accept() has failed and backed off at least once
        assert serving_host.agent.poll() is None
    finally:
        close_all(socks)
        limit_files(serving_host.agent.pid, 1024)
    serving_host.wait_for(lambda: healthz(serving_host), timeout=30, what="/healthz after EMFILE")
    serving_host.wait_ready(timeout=90)
    assert serving_host.agent.poll() is None
    assert "api.accept_failed" in serving_host.log_text() and "Traceback" not in serving_host.log_text()
