"""Every file mipart writes has the mode and owner docs/security.md says, read from its table.

A simulated host serves two fake engines with the process runner (real nginx); then the run
directory and the model cache are walked. Before issue 9 the spec files were 0644.
"""

from __future__ import annotations

import fnmatch
import os
import re
import stat
from pathlib import Path

import pytest

from mipart.sim.fake_profile import FakeEngineProfile, Ports
from mipart.sim.host import SimulatedHost

DOC = Path(__file__).resolve().parents[2] / "docs" / "security.md"
RUN = "/run/mipart/"
ROW = re.compile(r"\| `(/run/mipart/[^`]+)` \| [^|]+ \| (0[0-7]{3}) \| (\w+) \|")


def table() -> dict[str, int]:
    """Glob under the run dir -> the most its mode may be, from docs/security.md's file table."""
    rows = {}
    for line in DOC.read_text().splitlines():
        match = ROW.match(line)
        if match:
            path, mode, owner = match.groups()
            assert owner == "root", line  # the only owner a file under the run dir has
            rows[re.sub(r"(?<![^/])N(?=[./])", "[0-9]*", path[len(RUN) :])] = int(mode, 8)
    return rows


def test_the_table_is_there_and_parses():
    rows = table()
    assert rows["instances/[0-9]*.json"] == 0o600 and rows["instances/[0-9]*.env"] == 0o600
    assert len(rows) >= 8


@pytest.fixture
def serving_host(tmp_path):
    serving = SimulatedHost(
        tmp_path,
        FakeEngineProfile(Ports.free(low=21000), partitions='"0-1"', hf_home=str(tmp_path / "cache/hf")),
        expected=2,
    )
    try:
        serving.start_agent()
        serving.wait_ready(2, timeout=90)
        yield serving
    finally:
        serving.close()


def test_every_file_mipart_writes_has_the_documented_mode_and_owner(serving_host):
    rows = table()
    seen = []
    for path in sorted(p for p in serving_host.run_dir.rglob("*") if not p.is_dir()):
        relative = str(path.relative_to(serving_host.run_dir))
        matches = [glob for glob in rows if fnmatch.fnmatchcase(relative, glob)]
        assert matches, f"{relative} is not in the table of docs/security.md"
        info = path.lstat()
        allowed = rows[matches[0]]
        assert stat.S_IMODE(info.st_mode) & ~allowed == 0, (
            f"{relative}: mode {stat.S_IMODE(info.st_mode):04o}, docs/security.md says at most {allowed:04o}"
        )
        assert info.st_uid == os.geteuid(), f"{relative}: owner uid {info.st_uid}"
        seen.append(matches[0])
    assert {"instances/[0-9]*.json", "nginx/nginx.conf"} <= set(seen)
    cache = serving_host.spec.hf_home
    if os.geteuid() == 0:  # the launcher creates the cache only as root, for the instance user (here root)
        assert Path(cache).is_dir() and Path(cache).stat().st_uid == 0
        assert not [p for p in Path(cache).rglob("*")]  # nothing of mipart's goes in it
