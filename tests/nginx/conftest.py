"""Fixtures shared by the nginx tier's test modules."""

from __future__ import annotations

import pytest

from mipart.names import RUN_DIR_VAR, SERVING_DIR_VAR

from .api_host import FakeInstances, LiveApi, SimApiHost


@pytest.fixture
def sim_api_host(tmp_path, monkeypatch) -> SimApiHost:
    """A simulated host with an Agent filled in by hand: 16 instances in every state, no processes
    but their sockets, which answer /metrics (sim_api_host.instances.bodies says what)."""
    monkeypatch.setenv(RUN_DIR_VAR, str(tmp_path / "run"))
    monkeypatch.setenv(SERVING_DIR_VAR, str(tmp_path / "serving"))
    host = SimApiHost(tmp_path)
    host.instances = FakeInstances([spec.socket for spec in host.agent.specs.values()])
    yield host
    host.instances.close()


@pytest.fixture
def live_api(sim_api_host):
    """sim_api_host's agent answering its status API on the profile's address, as the agent serves it."""
    api = LiveApi(sim_api_host.agent, sim_api_host.api)
    yield api
    api.close()
