"""Fixtures shared by the nginx tier's test modules."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import pytest

from mipart.names import RUN_DIR_VAR, SERVING_DIR_VAR

from .api_host import FakeInstances, LiveApi, SimApiHost


class ReachableTmp:
    """Test directories where nginx's workers may search: they run as www-data and connect to the back
    layer's unix sockets in a host's run dir, as they reach /run/mipart (0755) on a host. pytest's own
    lie under a 0700 directory it resets at every session, so this tier's are made in the system's
    temp dir (searchable, not listable, by others) and removed after the session."""

    def __init__(self) -> None:
        self.base = self._searchable(Path(tempfile.mkdtemp(prefix="mipart-test-")))

    def mktemp(self, name: str) -> Path:
        return self._searchable(Path(tempfile.mkdtemp(prefix=name, dir=self.base)))

    @staticmethod
    def _searchable(path: Path) -> Path:
        path.chmod(0o711)
        return path


@pytest.fixture(scope="session")
def tmp_path_factory():
    """This tier's tmp_path_factory: ReachableTmp's directories."""
    factory = ReachableTmp()
    yield factory
    shutil.rmtree(factory.base, ignore_errors=True)


@pytest.fixture
def tmp_path(tmp_path_factory) -> Path:
    """A test's own directory, as ReachableTmp makes them; removed after the test."""
    path = tmp_path_factory.mktemp("test")
    yield path
    shutil.rmtree(path, ignore_errors=True)


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
