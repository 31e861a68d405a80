"""A fleet of three mipart hosts, each with its own address, driven by a real `ansible-playbook`
over SSH with the mipart.host collection, behind HAProxy with a client loop: a profile change
that needs no reload (a service's args) reaches every host with no failed request, and a
second run changes nothing. The bed (tests/system/fleet.py) is the one the rollout tests use."""

from __future__ import annotations

import json
import time
from pathlib import Path

from .balancer import Balancer, Clients
from .controller import Controller
from .fleet import Fleet, profile

PLAYBOOK = Path(__file__).with_name("playbooks") / "apply_profile.yml"


def test_a_profile_reaches_three_hosts_behind_a_balancer_with_no_failed_request(tmp_path, deb, ansible_bin):
    started = time.monotonic()
    with Fleet(tmp_path / "fleet", deb) as fleet:
        print(
            f"fleet up: {time.monotonic() - started:.1f}s ({', '.join(f'{k} {v:.1f}s' for k, v in fleet.timings.items())})"
        )
        controller = Controller(fleet, ansible_bin, tmp_path / "controller")
        wanted = profile('["--max-num-seqs", "64"]')
        (tmp_path / "chat.yaml").write_text(wanted)
        playbook = [str(PLAYBOOK), "-e", f"profile_src={tmp_path / 'chat.yaml'}"]
        with Balancer(fleet, tmp_path) as balancer, Clients(fleet) as clients:
            first = controller.playbook(*playbook)
            assert first.done.returncode == 0, first.output[-8000:]
            second = controller.playbook(*playbook)
            assert second.done.returncode == 0, second.output[-8000:]
            seen = clients.stop()
            served = {name: int(row["hrsp_2xx"]) for name, row in balancer.servers().items()}
        print(f"client answers: {seen}; 2xx per host through haproxy: {served}")

        hosts = [h.name for h in fleet.hosts]
        assert sorted(first.recap()) == hosts, first.output[-3000:]
        assert all(r["changed"] == 3 and r["failed"] == 0 for r in first.recap().values()), first.output[-3000:]
        assert all(r["changed"] == 0 and r["failed"] == 0 for r in second.recap().values()), second.output[-3000:]
        assert set(seen) == {"200"} and seen["200"] > 0, seen
        assert sorted(served) == hosts and all(count > 0 for count in served.values()), served
        for host in fleet.hosts:
            report = json.loads(host.machine.run("mipart status --json").stdout)
            digest = json.loads(host.machine.run("mipart validate --json").stdout)["digest"]
            assert report["status"]["profile"]["digest"] == digest
            assert host.machine.run("cat /etc/mipart/profile.yaml").stdout == wanted
            engines = host.machine.run("ps -eo args | grep '[m]ipart.sim.engine'").stdout.splitlines()
            assert len(engines) == 2 and all("--max-num-seqs 64" in e for e in engines), engines
