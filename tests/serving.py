"""The serving tests' host: mipart.sim.host's SimulatedHost with the tests' ports and profile defaults.

Everything it starts it also stops, by PID (see mipart.sim.host): the agent, then every
process tagged with this host's own run dir, then nginx from its pid file.
"""

from __future__ import annotations

from pathlib import Path

from mipart.sim.host import FakeEngineProfile, Ports, SimulatedHost

TEST_PORTS = 20000  # the suite's ports start here; benchmarks take 10001-19999


class ServingHost(SimulatedHost):
    def __init__(
        self,
        tmp: Path,
        compute="DPX",
        memory="NPS2",
        delay=0.5,
        tps=50,
        interval="500ms",
        unhealthy_after=2,
        args="[]",
        instances=16,
        rules="mainline",
    ):
        profile = FakeEngineProfile(
            Ports.free(64, low=TEST_PORTS),
            compute=compute,
            memory=memory,
            delay=delay,
            tps=tps,
            args=args,
            interval=interval,
            unhealthy_after=unhealthy_after,
        )
        super().__init__(tmp, profile, expected=instances, rules=rules)

    backend_of_one_request_or_none = SimulatedHost.status_of_one_request
