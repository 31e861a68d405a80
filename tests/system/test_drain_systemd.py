"""`mipart drain --wait` and `mipart undrain` on a real systemd: the .deb's units, `systemctl reload
mipart-agent` as the way the agent hears of it, and the readiness path answered through the real
nginx units (mipart-nginx-front, then mipart-nginx), asked from outside the machine as a fleet
balancer would. The drain outlives `systemctl restart mipart-agent`; the instances serve throughout.
"""

from __future__ import annotations

import http.client
import json
import time

import pytest

from .nspawn import Machine, install_deb
from .test_repartition_systemd import SIM, Serving

pytestmark = pytest.mark.system


def ready(port: int) -> tuple[int, dict]:
    """GET /mipart/ready on the service's listener, from the host (the machine shares its network)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        conn.request("GET", "/mipart/ready")
        response = conn.getresponse()
        return response.status, json.loads(response.read())
    finally:
        conn.close()


def test_drain_and_undrain_flip_readiness_through_the_nginx_units_and_outlive_an_agent_restart(machine: Machine, deb):
    m = machine
    install_deb(m, deb)
    host = Serving(m)
    m.run(f"mipart sim create {SIM} --model mi300x --gpus 2 --compute DPX --memory NPS2")
    m.run(f"printf 'MIPART_SYSFS_ROOT={SIM}\\n' >/etc/default/mipart")
    host.write_profile("DPX")  # gpus.drain_notice left at its 10 s: `drain --wait` waits it out
    m.run("systemctl start mipart-partition mipart-agent", timeout=180)
    host.wait_ready(4)
    deadline = time.monotonic() + 30  # ready once nginx serves an instance (a moment after the agent says so)
    while ready(host.listen)[0] != 200:
        assert time.monotonic() < deadline, ready(host.listen)
        time.sleep(0.2)
    assert ready(host.listen) == (200, {"ready": True, "service": "chat"})

    said = json.loads(m.run("mipart drain --reason 'kernel update' --wait --json", timeout=120).stdout)
    assert said["drained"] is True and said["changed"] is True
    assert ready(host.listen) == (
        503,
        {"ready": False, "service": "chat", "reason": "drained: kernel update", "since": said["since"]},
    )
    assert host.request() == "200"  # the instances serve whoever still sends
    stat = m.run("stat -c '%U %a' /var/lib/mipart/drain.json").stdout.split()
    assert stat == ["root", "644"]
    assert "readiness.changed" in host.journal("mipart-agent")

    m.run("systemctl restart mipart-agent", timeout=120)
    host.wait_ready(4)
    assert host.status()["readiness"] == {
        "ready": False,
        "reason": "drained: kernel update",
        "since": said["since"],
        "drained": True,
    }
    assert ready(host.listen)[0] == 503 and host.request() == "200"
    assert "readiness: 503 on /mipart/ready" in m.run("mipart status", check=False).stdout

    back = json.loads(m.run("mipart undrain --json", timeout=120).stdout)
    assert back == {"drained": False, "changed": True}
    assert ready(host.listen) == (200, {"ready": True, "service": "chat"})
    assert host.status()["readiness"]["drained"] is False
    assert m.run("test -e /var/lib/mipart/drain.json", check=False).returncode == 1
