"""The front nginx layer with the real agent (process runner), real nginx and fake engines: clients
keep their connections across every membership reload, a back that restarts costs them nothing but
the JSON 503 while it is down, and a single-layer nginx hands its listeners over with no gap.

Load is perf/balancer_client.py (short completions on one aiohttp pool, nothing retried), in a
process of its own, bounded in seconds; it counts the connections it opened and every failure.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest
from conftest import REPO
from serving import ServingHost

from mipart.nginx import procs as nginx_procs
from mipart.prometheus import metric_sum
from mipart.sim.engine.openai import CONNECTIONS_OPENED
from mipart.unixhttp import METRICS_LIMIT, InstanceClient

pytestmark = pytest.mark.nginx
CLIENT = REPO / "perf" / "balancer_client.py"
CLIENTS = 32


@pytest.fixture
def serving_host(tmp_path):
    serving = ServingHost(tmp_path, instances=4, partitions='"0-1,8-9"', tps=0)  # GPUs 0-1 in DPX
    yield serving
    serving.close()


def start_client(host, seconds: float, keepalive: bool = True, clients: int = CLIENTS) -> subprocess.Popen:
    argv = [sys.executable, str(CLIENT), f"--port={host.listen}", f"--concurrency={clients}", f"--seconds={seconds}"]
    env = {**os.environ, "PYTHONPATH": str(REPO / "agent")}
    return subprocess.Popen(argv + ["--no-keepalive"] * (not keepalive), stdout=subprocess.PIPE, text=True, env=env)


def finish(client: subprocess.Popen, seconds: float) -> dict:
    out, _ = client.communicate(timeout=seconds + 90)
    assert client.returncode == 0
    return json.loads(out)


def kept(result: dict) -> int:
    """The most connections a client may have opened if none was cut: one per worker, and one more after
    each answer that said `Connection: close` (the front's keepalive_requests, 1000 on nginx 1.22, which a
    fast run reaches; the client counts those apart)."""
    return CLIENTS + result["closes_announced"]


def reloads(host) -> int:
    return host.log_text().count("event='nginx.updated'")


def test_clients_keep_their_connections_across_membership_reloads(serving_host):
    """Instances leave rotation and come back (an engine dies: /health 503, completions 500, and the
    agent restarts it): the back reloads each time, the front never. Nothing fails, and the client
    opens no more connections than it has workers but for those the front closed saying so."""
    serving_host.start_agent()
    serving_host.wait_ready()
    front = (serving_host.run_dir / "nginx-front/nginx.pid").read_text()
    before = reloads(serving_host)
    client = start_client(serving_host, seconds=12)
    time.sleep(1)
    for number in (0, 1, 8, 0):
        pid = serving_host.instance_pids()[number]
        os.kill(pid, signal.SIGUSR1)  # the engine dies, its port open: nginx passes its requests on
        serving_host.wait_for(
            lambda n=number, p=pid: serving_host.instance_pids().get(n) not in (None, p), timeout=10, what="a restart"
        )
        serving_host.wait_ready(timeout=10)
    result = finish(client, 12)
    assert reloads(serving_host) - before >= 8  # out and back in, four times
    assert result["requests"] > 1000 and result["errors"] == 0, result["failures"]
    assert CLIENTS <= result["connections_opened"] <= kept(result)
    assert (serving_host.run_dir / "nginx-front/nginx.pid").read_text() == front  # the front never restarted
    assert "layer='front'" not in serving_host.log_text().split("event='agent.ready'")[1]  # nor reloaded


def engine_connections(host) -> int:
    """Connections the instances were sent requests on so far (the fake engine's own counter), ours included."""

    async def read() -> int:
        client, total = InstanceClient(), 0
        for number in host.instance_pids():
            sock = str(host.serving_dir / f"sockets/{number}/http.sock")
            reply = await client.get(sock, f"/metrics?name[]={CONNECTIONS_OPENED}", timeout=5, limit=METRICS_LIMIT)
            total += int(metric_sum(reply.text(), CONNECTIONS_OPENED) or 0)
        return total

    return asyncio.run(read())


def test_the_back_keeps_its_connections_to_the_instances_under_load(serving_host):
    """More clients than the instances' old share of kept connections (8 each): the back opens a connection to
    an instance for a request it runs at once, not one per request. With 8 an instance, a loaded worker closed
    and opened them all the time, which cost the engines' Python servers a fifth of their CPU (docs/results)."""
    serving_host.start_agent()
    serving_host.wait_ready()
    clients = 128
    before = engine_connections(serving_host)
    result = finish(start_client(serving_host, seconds=6, clients=clients), 6)
    opened = engine_connections(serving_host) - before
    assert result["requests"] > 2000 and result["errors"] == 0, result["failures"]
    # the back's requests come on the front's kept connections, one back worker each, so its workers run
    # at most `clients` at once between them (106-136 in runs here; 499-877 with 8 kept an instance).
    # Slack: the front's own reconnections, the agent's probes, each read of the counter
    assert opened <= 2 * clients + 4 * 8, (opened, result["requests"])


def test_a_back_that_restarts_costs_kept_connections_nothing_but_the_json_503(serving_host):
    """The back master stops (SIGQUIT, as `systemctl restart mipart-nginx` stops it) and the agent
    starts it again: meanwhile the front answers the JSON 503; no kept-alive connection is cut."""
    serving_host.start_agent()
    serving_host.wait_ready()
    back = int((serving_host.run_dir / "nginx/nginx.pid").read_text())
    client = start_client(serving_host, seconds=6)
    time.sleep(2)
    os.kill(back, signal.SIGQUIT)
    serving_host.wait_for(lambda: serving_host.nginx_master() not in (None, back), timeout=10, what="a new back")
    result = finish(client, 6)
    assert set(result["failures"]) <= {"http 503"}, result["failures"]
    assert CLIENTS <= result["connections_opened"] <= kept(result)
    assert serving_host.backend_of_one_request()[0] == 200


def test_an_agent_restart_cuts_no_kept_connection(serving_host):
    """The agent restarts under keep-alive load: the new agent finds the front running the config it
    would write and adopts it (no reload, which would close the clients' idle connections)."""
    serving_host.start_agent()
    serving_host.wait_ready()
    front = nginx_procs.scan(serving_host.run_dir / "nginx-front")
    client = start_client(serving_host, seconds=8)
    time.sleep(2)
    serving_host.stop_agent()
    serving_host.start_agent()
    serving_host.wait_ready(timeout=20)
    result = finish(client, 8)
    assert result["requests"] > 200 and result["errors"] == 0, result["failures"]
    assert CLIENTS <= result["connections_opened"] <= kept(result)
    assert "event='nginx.adopted'" in serving_host.log_text() and "layer='front'" in serving_host.log_text()
    now = nginx_procs.scan(serving_host.run_dir / "nginx-front")
    assert (now.masters, now.workers) == (front.masters, front.workers)  # neither restarted nor reloaded


def test_a_single_layer_nginx_hands_its_listeners_to_the_front(serving_host):
    """What an upgrade from a single-layer mipart finds: no front, the back serving the service's port
    itself. The agent has the back listen on both, starts the front on copies of those sockets, and
    then drops the port from the back: the port is never closed, so no request is refused."""
    serving_host.start_agent()
    serving_host.wait_ready()
    serving_host.stop_agent()
    serving_host.agent = None  # none runs for a while: waiting must not end on its exit
    front = int((serving_host.run_dir / "nginx-front/nginx.pid").read_text())
    os.kill(front, signal.SIGQUIT)
    serving_host.wait_for(lambda: not nginx_procs.scan(serving_host.run_dir / "nginx-front").masters, what="no front")
    conf = serving_host.run_dir / "nginx/nginx.conf"
    sock = f"listen unix:{serving_host.run_dir}/nginx/svc-chat.sock;"
    conf.write_text(conf.read_text().replace(sock, f"listen 127.0.0.1:{serving_host.listen};"))
    os.kill(serving_host.nginx_master(), signal.SIGHUP)  # the single layer, as the previous mipart ran it
    serving_host.wait_for(lambda: serving_host.status_of_one_request() == 200, what="the single layer serving")
    (serving_host.run_dir / "nginx-front/nginx.conf").unlink()

    client = start_client(serving_host, seconds=8, keepalive=False)  # as the single layer's clients were
    time.sleep(1)
    serving_host.start_agent()
    serving_host.wait_for(
        lambda: serving_host.nginx_master("nginx-front") and "listen 127.0.0.1:" not in conf.read_text(),
        timeout=20,
        what="the front serving, the back without the port",
    )
    result = finish(client, 8)
    assert result["requests"] > 200 and result["errors"] == 0, result["failures"]
    assert "listen 127.0.0.1:" not in conf.read_text()
    [master] = nginx_procs.scan(serving_host.run_dir / "nginx").masters
    assert nginx_procs.listening_sockets(master, unix=False) == {}  # the back let the port go
    assert "using inherited sockets" in (serving_host.run_dir / "logs/mipart-nginx-front.log").read_text()
    assert "handover='done'" in serving_host.log_text()
    assert serving_host.backend_of_one_request()[0] == 200


def test_a_deleted_run_dir_is_served_again_by_a_back_bound_anew(serving_host):
    """`rm -rf /run/mipart` takes the back's sockets with it: a reload would keep the socket no one can
    reach, so a new back master binds them again, the old one's workers finishing what they carry.
    Meanwhile the front answers its JSON 503 and keeps the clients' connections."""
    serving_host.start_agent()
    serving_host.wait_ready()
    client = start_client(serving_host, seconds=6)
    time.sleep(1)
    gone = serving_host.run_dir.with_name(serving_host.run_dir.name + "-deleted")  # at once: the agent writes there
    serving_host.run_dir.rename(gone)
    shutil.rmtree(gone, ignore_errors=True)
    try:
        serving_host.wait_for(lambda: serving_host.status_of_one_request() == 200, timeout=20, what="serving again")
        result = finish(client, 6)
    finally:
        end_workers_in(gone)  # the old back's, masterless in the deleted dir: no host's close() finds them
    assert set(result["failures"]) <= {"http 503"}, result["failures"]
    assert CLIENTS <= result["connections_opened"] <= kept(result)
    assert "event='nginx.socket_lost'" in serving_host.log_text()
    assert (serving_host.run_dir / "nginx/svc-chat.sock").is_socket()


def test_after_a_deleted_run_dir_the_next_agent_adopts_the_front(serving_host):
    """`rm -rf /run/mipart` takes the front's record of the config it was handed; the front never
    reloads for it, so the agent writes the record again: the next agent (an upgrade, a restart) then
    adopts the front rather than reloading it, which would close the clients' idle connections."""
    serving_host.start_agent()
    serving_host.wait_ready()
    shutil.rmtree(serving_host.run_dir)  # in place, as rm -rf does: the front's cwd reads "<prefix> (deleted)"
    front_dir = serving_host.run_dir / "nginx-front"
    serving_host.wait_for(lambda: (front_dir / "nginx.conf").exists(), timeout=20, what="the front's config rewritten")
    serving_host.wait_for(lambda: serving_host.status_of_one_request() == 200, timeout=20, what="serving again")
    front = nginx_procs.scan(front_dir)
    assert front.masters and front.workers
    serving_host.stop_agent()
    serving_host.start_agent()
    serving_host.wait_ready(timeout=20)
    now = nginx_procs.scan(front_dir)
    assert (now.masters, now.workers) == (front.masters, front.workers)  # neither restarted nor reloaded


def end_workers_in(directory) -> None:
    """SIGTERM, by PID, the nginx processes this test left working in DIRECTORY (their cwd), and wait for them."""
    ours = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            if os.readlink(f"/proc/{pid}/cwd").startswith(f"{directory}/"):
                ours.append(int(pid))
        except OSError:
            continue
    for pid in ours:
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass  # it exited since the scan
    deadline = time.monotonic() + 10
    while any(os.path.exists(f"/proc/{pid}") for pid in ours) and time.monotonic() < deadline:
        time.sleep(0.1)
