"""Heavy test inputs (a rootfs, a venv, a model) cached across runs.

Each is built into a temp dir beside the cache and renamed into place under a lock, so
a crash or a parallel run never leaves (or sees) half of one. Nothing requires the cache:
an empty one is simply built again.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path


def cache_dir() -> Path:
    return Path(os.environ.get("MIPART_CACHE") or Path.home() / ".cache" / "mipart-tests")


def cached(root: Path, name: str, build: Callable[[Path], None]) -> Path:
    """root/name, made by build(tmp) when absent."""
    root.mkdir(parents=True, exist_ok=True)
    final = root / name
    with open(root / f"{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if final.is_dir():
            return final
        for stale in root.glob(f".{name}.*"):  # left by a build that crashed
            shutil.rmtree(stale, ignore_errors=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{name}.", dir=root))
        try:
            build(tmp)
            tmp.chmod(0o755)
            tmp.rename(final)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return final
