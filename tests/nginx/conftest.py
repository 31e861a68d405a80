"""Fixtures shared by the nginx tier's test modules."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import pytest

from mipart.names import RUN_DIR_VAR

from .api_host import LiveApi, SimApiHost


@pytest.fixture
def tmp_path() -> Path:
    """A test's own directory, where nginx's workers may search: they run as www-data and connect to
    the back layer's unix sockets in a host's run dir, as they reach /run/mipart (0755) on a host.
    pytest's own tmp_path lies under a 0700 directory it resets at every session, so this tier's is
    made in the system's temp dir instead (searchable, not listable, by others), and removed after."""
    path = Path(tempfile.mkdtemp(prefix="mipart-test-"))
    path.chmod(0o711)
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def sim_api_host(tmp_path, monkeypatch) -> SimApiHost:
    """A simulated host with an Agent filled in by hand: 16 instances in every state, no processes."""
    monkeypatch.setenv(RUN_DIR_VAR, str(tmp_path / "run"))
    return SimApiHost(tmp_path)


@pytest.fixture
def live_api(sim_api_host):
    """sim_api_host's agent answering its status API on the profile's address, as the agent serves it."""
    api = LiveApi(sim_api_host.agent, sim_api_host.api)
    yield api
    api.close()
