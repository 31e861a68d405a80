"""Serving that no local user, instance or squatter can take over (issue 20), on a simulated host
with the process runner, real nginx and fake engines.

Instances run as uids of their own (instances.user: nobody, so 70000 + N) in a work dir any user
may enter, as /var/lib/mipart and /run/mipart are on a host.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from attempts import SCRIPT
from serving import ServingHost

from mipart.runners import records

NOBODY = 65534
SECRET = "s3cr3t-token"


def as_user(uid: int, what: str, path: str) -> str:
    """What happened when uid (group nogroup) tried `what` on `path`: "done", the environ read, or the error's name."""
    drop = ["setpriv", f"--reuid={uid}", f"--regid={NOBODY}", "--clear-groups"]
    done = subprocess.run([*drop, sys.executable, "-c", SCRIPT, what, path], capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


@pytest.fixture
def host():
    """Two instances as uids of their own, with a secret in their environment; work dir under /tmp (0755)."""
    work = Path(tempfile.mkdtemp(prefix="mipart-test-"))
    work.chmod(0o755)
    serving = ServingHost(
        work,
        instances=2,
        partitions='"0-1"',
        user="nobody",
        hf_home=str(work / "hf"),
        services={"chat": {"env": {"SECRET_TOKEN": SECRET}}},
    )
    yield serving
    serving.close()
    shutil.rmtree(work, ignore_errors=True)


def test_no_one_else_can_listen_where_an_instance_listens_and_the_instance_comes_up(host):
    """Finding 2: a listener on an instance's port was routed to. Now nobody, and no other instance,
    can make anything in the sockets directory or in an instance's own, before or after it starts."""
    sockets = host.serving_dir / "sockets"
    assert as_user(NOBODY, "mkdir", str(sockets)) == "PermissionError"  # before the agent makes it
    host.start_agent()
    host.wait_ready(2)
    for uid, path in (
        (NOBODY, sockets / "0/http.sock"),
        (NOBODY, sockets / "2"),
        (70001, sockets / "0/evil.sock"),  # instance 1 in instance 0's directory
    ):
        assert as_user(uid, "bind" if path.suffix else "mkdir", str(path)) == "PermissionError", path
    backends = {host.backend_of_one_request() for _ in range(20)}
    assert backends == {(200, host.backend(0)), (200, host.backend(1))}


def test_an_instance_can_neither_read_another_instances_environment_nor_signal_it(host):
    """Finding 4: every native server ran as `mipart`, so one read another's secret from /proc/PID/environ."""
    host.start_agent()
    host.wait_ready(2)
    launched = records.launches(host.serving_dir)
    assert {n: launch.uid for n, launch in launched.items()} == {0: 70000, 1: 70001}
    other = launched[1].pid
    assert as_user(70000, "environ", str(other)) == "PermissionError"
    assert as_user(70000, "kill", str(other)) == "PermissionError"
    assert SECRET in as_user(70001, "environ", str(other))  # its own uid reads it: the test can tell


def test_a_squatted_api_address_delays_the_api_but_not_serving(tmp_path):
    """Finding 6: a user holding 127.0.0.1:8049 when the agent started stopped every reconciliation."""
    host = ServingHost(tmp_path, instances=2, partitions='"0-1"')
    squatter = socket.socket()
    squatter.bind(("127.0.0.1", host.api_port))
    squatter.listen()
    try:
        host.start_agent()
        host.wait_for(lambda: host.ready_count() == 2, timeout=60, what="instances in nginx without the API")
        host.wait_for(lambda: host.status_of_one_request() == 200, timeout=10, what="nginx serving")
        assert host.api_ready() is None  # the squatter holds the address, and answers nothing
        assert host.log_text().count("event='api.bind_failed'") == 1  # said once, retried quietly
    finally:
        squatter.close()
    try:
        host.wait_for(lambda: host.api_ready() == 2, timeout=40, what="the API once the address is free")
        assert "event='api.listening'" in host.log_text()
    finally:
        host.close()
