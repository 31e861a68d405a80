"""A profile's text put in a file for the host's mipart to read, before it may replace the real one."""

from __future__ import annotations

import os
import tempfile

MODE = 0o640  # as debian/rules installs the profile: it may carry values meant for the servers only


def stage(content, where):
    """CONTENT in a new file under WHERE (mode MODE, synced); returns its path."""
    fd, path = tempfile.mkstemp(prefix=".profile.", suffix=".yaml", dir=where)
    with os.fdopen(fd, "wb") as f:
        os.fchmod(f.fileno(), MODE)
        f.write(content.encode())
        f.flush()
        os.fsync(f.fileno())
    return path
