"""The rollout bed: three mipart hosts of two simulated MI300Xs each (tests/system/fleet.py), the controller
with the mipart.host collection (controller.py), HAProxy health-checking each host's readiness path and a
client loop through it (balancer.py); the profiles the rollout scenarios and perf/bench_fleet_rollout.py roll.
"""

from __future__ import annotations

import json
from contextlib import ExitStack
from pathlib import Path

from .balancer import Balancer, Clients
from .controller import Controller, Run
from .fleet import Fleet, Host, profile

GPUS = 2  # per host: a compute change on one GPU leaves the other serving
NOTICE = "3s"  # gpus.drain_notice: HAProxy takes a host out after 2 failed checks 500 ms apart
BASE = f"{{compute: DPX, memory: NPS1, drain_notice: {NOTICE}}}"  # as the hosts boot
ROLLING = f"{{compute: DPX, memory: NPS1, drain_notice: {NOTICE}, overrides: [{{select: [1], compute: SPX}}]}}"
HOST_WIDE = f"{{compute: DPX, memory: NPS2, drain_notice: {NOTICE}}}"
WAVES = '{"mipart_rollout_waves": [1, 2]}'  # the canary, then the other two at once
REJOIN = 2  # seconds HAProxy needs to take an undrained host back: 2 checks 500 ms apart, and a margin


class RolloutBed:
    """The bed as a context manager; rollout() runs the collection's playbook under the client loop."""

    def __init__(self, workdir: Path, deb: Path, ansible_bin: Path):
        self.workdir, self.deb, self.ansible_bin = workdir, deb, ansible_bin
        self._stack = ExitStack()
        self._profiles = 0

    def __enter__(self) -> RolloutBed:
        try:
            self.fleet = self._stack.enter_context(
                Fleet(self.workdir / "fleet", self.deb, text=profile(gpus=BASE), gpus=GPUS)
            )
            self.controller = Controller(self.fleet, self.ansible_bin, self.workdir / "controller")
            self.balancer = self._stack.enter_context(Balancer(self.fleet, self.workdir))
        except BaseException:
            self._stack.close()
            raise
        self.names = [h.name for h in self.fleet.hosts]
        return self

    def __exit__(self, *exc) -> None:
        self._stack.close()

    def rollout(self, text: str, *extra: str) -> tuple[Run, dict[str, int], dict[str, int]]:
        """The playbook run with the profile TEXT under the client loop: (the run, what the clients saw by
        kind, how often HAProxy took each host out meanwhile)."""
        self._profiles += 1
        src = self.workdir / f"profile-{self._profiles}.yaml"
        src.write_text(text)
        before = self.taken_out()
        with Clients(self.fleet) as clients:
            args = ["-e", f"mipart_profile_src={src}", "-e", WAVES, "-e", f"mipart_rollout_rejoin={REJOIN}", *extra]
            run = self.controller.playbook("mipart.host.rollout", *args)
            seen = clients.stop()
        after = self.taken_out()
        return run, seen, {name: after[name] - before[name] for name in self.names}

    def taken_out(self) -> dict[str, int]:
        """HAProxy's count of UP -> DOWN transitions per host (its health checks failed)."""
        return {name: int(row["chkdown"]) for name, row in self.balancer.servers().items()}

    def serving(self) -> str:
        """The profile every host has (the same on all, else this fails)."""
        texts = {h.machine.run("cat /etc/mipart/profile.yaml").stdout for h in self.fleet.hosts}
        assert len(texts) == 1, texts
        return texts.pop()


def status(host: Host) -> dict:
    """The host's /v1/status, through `mipart status --json`."""
    return json.loads(host.machine.run("mipart status --json", check=False).stdout)["status"]


def digest(host: Host) -> str:
    """The digest of the profile on the host's disk."""
    return json.loads(host.machine.run("mipart validate --json").stdout)["digest"]


def failed(seen: dict[str, int]) -> int:
    """Client answers other than 200."""
    return sum(n for kind, n in seen.items() if kind != "200")
