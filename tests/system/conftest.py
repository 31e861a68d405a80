"""Fixtures for the system tier: a built .deb and a fresh booted machine per test."""

from __future__ import annotations

import os

import pytest

from . import nspawn


@pytest.fixture(scope="session")
def system_ready() -> None:
    """Skip (with the reason) where nspawn cannot run; MIPART_REQUIRE_SYSTEM=1 makes it fail."""
    reason = nspawn.unavailable_reason()
    if reason:
        if os.environ.get("MIPART_REQUIRE_SYSTEM") == "1":
            pytest.fail(reason)
        pytest.skip(reason)


@pytest.fixture(scope="session")
def deb(tmp_path_factory, system_ready):
    return nspawn.build_deb(tmp_path_factory.mktemp("deb"))


@pytest.fixture
def machine(tmp_path, system_ready):
    with nspawn.Machine(tmp_path / "machine") as m:
        yield m
