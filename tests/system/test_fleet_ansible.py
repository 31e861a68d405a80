"""A fleet of three mipart hosts, each with its own address, driven by a real `ansible-playbook`
over SSH with the mipart.host collection, behind HAProxy with a client loop: a profile change
that needs no reload (a service's args) reaches every host with no failed request, and a
second run changes nothing. The bed (tests/system/fleet.py) is the one the rollout tests use."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

from ansible_tools import install_collection, tool_env

from .balancer import Balancer, Clients
from .fleet import Fleet, profile

PLAYBOOK = Path(__file__).with_name("playbooks") / "apply_profile.yml"
RECAP = re.compile(r"^(\w+)\s+:\s+ok=(\d+)\s+changed=(\d+)\s+unreachable=(\d+)\s+failed=(\d+)", re.MULTILINE)


def recap(output: str) -> dict[str, dict[str, int]]:
    """PLAY RECAP per host: ok, changed, unreachable, failed."""
    return {
        host: dict(zip(("ok", "changed", "unreachable", "failed"), map(int, counts), strict=True))
        for host, *counts in RECAP.findall(output)
    }


def test_a_profile_reaches_three_hosts_behind_a_balancer_with_no_failed_request(tmp_path, deb, ansible_bin):
    started = time.monotonic()
    with Fleet(tmp_path / "fleet", deb) as fleet:
        print(
            f"fleet up: {time.monotonic() - started:.1f}s ({', '.join(f'{k} {v:.1f}s' for k, v in fleet.timings.items())})"
        )
        env = tool_env(ansible_bin, tmp_path / "controller")
        env.update(
            ANSIBLE_COLLECTIONS_PATH=str(install_collection(ansible_bin, tmp_path / "controller")),
            ANSIBLE_SSH_ARGS="-o ControlMaster=no",  # no ssh master left running after the play
            ANSIBLE_PIPELINING="true",
            ANSIBLE_NOCOLOR="true",
        )
        wanted = profile('["--max-num-seqs", "64"]')
        (tmp_path / "chat.yaml").write_text(wanted)
        playbook = [
            "ansible-playbook",
            "-i",
            str(fleet.inventory(tmp_path / "inventory.ini")),
            str(PLAYBOOK),
            "-e",
            f"profile_src={tmp_path / 'chat.yaml'}",
        ]
        with Balancer(fleet, tmp_path) as balancer, Clients(fleet) as clients:
            first = fleet.run(playbook, env)
            assert first.returncode == 0, (first.stdout + first.stderr)[-8000:]
            second = fleet.run(playbook, env)
            assert second.returncode == 0, (second.stdout + second.stderr)[-8000:]
            seen = clients.stop()
            served = {name: int(row["hrsp_2xx"]) for name, row in balancer.servers().items()}
        print(f"client answers: {seen}; 2xx per host through haproxy: {served}")

        hosts = [h.name for h in fleet.hosts]
        assert sorted(recap(first.stdout)) == hosts, first.stdout[-3000:]
        assert all(r["changed"] == 3 and r["failed"] == 0 for r in recap(first.stdout).values()), first.stdout[-3000:]
        assert all(r["changed"] == 0 and r["failed"] == 0 for r in recap(second.stdout).values()), second.stdout[-3000:]
        assert set(seen) == {"200"} and seen["200"] > 0, seen
        assert sorted(served) == hosts and all(count > 0 for count in served.values()), served
        for host in fleet.hosts:
            report = json.loads(host.machine.run("mipart status --json").stdout)
            digest = json.loads(host.machine.run("mipart validate --json").stdout)["digest"]
            assert report["status"]["profile"]["digest"] == digest
            assert host.machine.run("cat /etc/mipart/profile.yaml").stdout == wanted
            engines = host.machine.run("ps -eo args | grep '[m]ipart.sim.engine'").stdout.splitlines()
            assert len(engines) == 2 and all("--max-num-seqs 64" in e for e in engines), engines
