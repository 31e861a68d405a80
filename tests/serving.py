"""The serving tests' host: mipart.sim.host's SimulatedHost on the tests' own ports.

Everything it starts it also stops, by PID (see mipart.sim.host): the agent, then every
process tagged with this host's own run dir, then nginx from its pid file.
"""

from __future__ import annotations

from pathlib import Path

from mipart.sim.fake_profile import FakeEngineProfile, Ports
from mipart.sim.host import SimulatedHost

TEST_PORTS = 20000  # the suite's ports start here; benchmarks take 10001-19999


class ServingHost(SimulatedHost):
    """An 8 x MI300X host serving FakeEngineProfile(**fields) on the suite's ports; `instances` is
    how many wait_ready() waits for."""

    def __init__(self, tmp: Path, instances: int = 16, rules: str = "mainline", **fields):
        profile = FakeEngineProfile(Ports.free(low=TEST_PORTS), **fields)
        super().__init__(tmp, profile, expected=instances, rules=rules)

    backend_of_one_request_or_none = SimulatedHost.status_of_one_request
