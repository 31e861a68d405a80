"""Every file and directory mipart writes has the mode and owner docs/security.md says, read from its table.

A simulated host serves with the process runner (real nginx), its instances as uids of their own
(instances.user: nobody), while `mipart bench sweep` runs two layouts through it; meanwhile the run
directory, the instances' state directory and the model cache are walked over and over, so files
that live for a moment (the sweep's override, temporary files) are seen too. Before issue 9 the
spec files were 0644; before issue 20 the sweep wrote the operator's profile out 0644.
"""

from __future__ import annotations

import fnmatch
import os
import pwd
import re
import shutil
import stat
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

import pytest
from serving import TEST_PORTS
from testcache import cache_dir

from mipart.names import NGINX_WORKER_USER, instance_uid
from mipart.sim.fake_profile import FakeEngineProfile, Ports
from mipart.sim.host import SimulatedHost

DOC = Path(__file__).resolve().parents[2] / "docs" / "security.md"
ROW = re.compile(
    r"\| `(?P<path>(/run/mipart/|/run/mipart-vllm/|/var/lib/mipart/|instances\.hf_home/)[^`]*)` \| [^|]+ \| "
    r"(?P<mode>[0-7]{4}) \| (?P<owner>[^|]+?) \|"
)
PLACES = {
    "/run/mipart/": "run",
    "/run/mipart-vllm/": "serving",
    "/var/lib/mipart/": "state",
    "instances.hf_home/": "cache",
}
USER = "nobody"


def table() -> dict[tuple[str, str], tuple[int, str]]:
    """(place, glob below it) -> (the most its mode may be, its owner's word), from docs/security.md's table."""
    rows = {}
    for line in DOC.read_text().splitlines():
        match = ROW.match(line)
        if match:
            prefix = next(p for p in PLACES if match["path"].startswith(p))
            glob = re.sub(r"(?<![^/])N(?=[./]|$)", "[0-9]*", match["path"][len(prefix) :])
            rows[(PLACES[prefix], glob)] = (int(match["mode"], 8), match["owner"])
    return rows


def test_the_table_is_there_and_parses():
    rows = table()
    assert rows[("run", "instances/[0-9]*.json")] == (0o600, "root")
    assert rows[("run", "profile.override.yaml")] == (0o600, "root")
    assert rows[("serving", "sockets/[0-9]*/")] == (0o750, "the instance")
    assert rows[("state", "home/[0-9]*/")] == (0o700, "the instance") and ("cache", "") in rows
    assert {owner for _, owner in rows.values()} == {"root", "the instance", "nginx's workers", "instances.user"}


def owner_uid(word: str, relative: str) -> int:
    if word == "root":
        return os.geteuid()
    if word == "nginx's workers":
        return pwd.getpwnam(NGINX_WORKER_USER).pw_uid
    if word == "instances.user":
        return pwd.getpwnam(USER).pw_uid
    number = next(part for part in relative.split("/") if part.isdigit())  # sockets/N/..., home/N/
    return instance_uid(int(number))


class Walker(threading.Thread):
    """Walks the places over and over until stopped; every entry seen, with its mode when first seen and its
    owner when last seen: mipart makes a directory as root and then gives it to its owner through the
    descriptor (safedirs.make_dir), so for a moment it is root's, with the mode it ends with."""

    def __init__(self, places: dict[str, Path]):
        super().__init__(daemon=True)
        self.places, self.seen, self.owners, self.done = places, {}, {}, threading.Event()

    def run(self) -> None:
        while not self.done.wait(0.02):  # the override lives for a layout's whole step: seconds
            self.walk()

    def walk(self) -> None:
        for place, root in self.places.items():
            entries = [root] if place == "cache" else root.rglob("*") if place == "state" else [root, *root.rglob("*")]
            for path in entries:
                try:
                    info = path.lstat()
                except FileNotFoundError:
                    continue  # gone between listing and looking: a temporary file
                relative = "" if path == root else str(path.relative_to(root))
                if stat.S_ISDIR(info.st_mode):
                    relative += "/" if relative else ""
                if place == "state" and len(relative.rstrip("/").split("/")) > 2:
                    continue  # what a server keeps in its HOME is its own
                self.seen.setdefault((place, relative), stat.S_IMODE(info.st_mode))
                self.owners[(place, relative)] = info.st_uid


@pytest.fixture
def host():
    """Instances as uids of their own; the work dir under /tmp (0755), as /var/lib/mipart and /run/mipart are."""
    work = Path(tempfile.mkdtemp(prefix="mipart-test-"))
    work.chmod(0o755)
    profile = FakeEngineProfile(
        Ports.free(low=TEST_PORTS),
        compute="SPX",
        memory="NPS1",
        delay=0.3,
        tps=200,
        user=USER,
        hf_home=str(work / "hf"),
    )
    serving = SimulatedHost(work, profile, gpus=2, expected=2)
    try:
        serving.start_agent()
        serving.wait_ready(2, timeout=90)
        yield serving
    finally:
        serving.close()
        shutil.rmtree(work, ignore_errors=True)


def test_every_file_mipart_writes_has_the_documented_mode_and_owner(host):
    rows = table()
    places = {"run": host.run_dir, "serving": host.serving_dir, "state": host.work / "state", "cache": host.work / "hf"}
    walker = Walker(places)
    walker.start()
    sweep = [
        *("bench", "sweep", "--profile", str(host.profile), "--layouts", "DPX/NPS2,DPX/NPS1"),
        *("--concurrency", "1", "--warmup", "0", "--duration", "1", "--dir", str(host.work / "sweep")),
        *("--prompt-tokens", "16", "--output-tokens", "8"),
    ]
    env = {**os.environ, **host.env, "XDG_CACHE_HOME": str(cache_dir())}
    try:
        done = subprocess.run(
            [sys.executable, "-m", "mipart", *sweep], env=env, capture_output=True, text=True, timeout=1800
        )
    finally:
        walker.done.set()
        walker.join(30)
    assert done.returncode == 0, done.stderr[-3000:]
    walker.walk()  # once more, all at rest
    for (place, relative), mode in sorted(walker.seen.items()):
        uid = walker.owners[(place, relative)]
        matches = [glob for p, glob in rows if p == place and fnmatch.fnmatchcase(relative, glob)]
        assert matches, f"{place} {relative!r} is not in the table of docs/security.md"
        allowed, owner = rows[(place, matches[0])]
        assert mode & ~allowed == 0, f"{place} {relative}: mode {mode:04o}, docs/security.md says at most {allowed:04o}"
        assert uid == owner_uid(owner, relative), f"{place} {relative}: owner uid {uid}, docs/security.md: {owner}"
    seen = {
        (p, glob)
        for place, relative in walker.seen
        for p, glob in rows
        if p == place and fnmatch.fnmatchcase(relative, glob)
    }
    for must in (
        ("run", "profile.override.yaml"),
        ("run", "bench-sweep.lock"),
        ("run", "nginx/svc-*.sock"),  # the back layer's, which the front passes requests to
        ("run", "nginx-front/nginx.conf"),
        ("serving", "sockets/[0-9]*/http.sock"),
        ("serving", "launched/[0-9]*.json"),
        ("state", "home/[0-9]*/"),
        ("cache", ""),
    ):
        assert must in seen, f"the walk never saw {must}"
