"""`mipart bench` as the nginx tier runs it: the real CLI against a serving host, with the load
tool cached in the tests' cache (XDG_CACHE_HOME=<test cache>), so only the first run installs it."""

from __future__ import annotations

import os
import subprocess
import sys

from testcache import cache_dir

FIRST_INSTALL = 1800  # the first run installs the tool (about 2 minutes here); later runs find it


def bench(host, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, **host.env, "XDG_CACHE_HOME": str(cache_dir())}
    return subprocess.run(
        [sys.executable, "-m", "mipart", "bench", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=FIRST_INSTALL,
        cwd=host.work,
    )
