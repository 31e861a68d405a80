"""Where mipart keeps what it generates (/run/mipart) and what must survive reboots."""

from __future__ import annotations

import os
from pathlib import Path


def run_dir() -> Path:
    return Path(os.environ.get("MIPART_RUN_DIR", "/run/mipart"))


def state_dir() -> Path:
    return Path(os.environ.get("MIPART_STATE_DIR", "/var/lib/mipart"))


def instance_spec_path(number: int, base: Path | None = None) -> Path:
    return (base or run_dir()) / "instances" / f"{number}.json"


def nginx_prefix(base: Path | None = None) -> Path:
    return (base or run_dir()) / "nginx"
