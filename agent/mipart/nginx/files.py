"""Putting a rendered nginx.conf into service: validate with `nginx -t`, then reload.

A config nginx refuses never replaces the one that is serving: it is kept beside it
as nginx.conf.rejected for a person to read, and the refusal is reported. Each of the
two layers (the back, reloaded on membership; the front, holding the clients'
connections: docs/routing.md) has a prefix of its own.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from mipart.errors import UserError
from mipart.fsutil import write_atomic
from mipart.names import NGINX_FRONT_UNIT, NGINX_UNIT
from mipart.nginx.conf import UPSTREAM_LOG
from mipart.paths import nginx_front_prefix, nginx_prefix

UNIX_LISTEN = re.compile(r"^\s*listen unix:([^;\s]+)", re.MULTILINE)
Layer = Literal["back", "front"]
BACK: Layer = "back"
FRONT: Layer = "front"

TEMP_DIRS = ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
TEMP_MODE = 0o700


def nginx_binary() -> str:
    found = (
        os.environ.get("MIPART_NGINX")
        or shutil.which("nginx")
        or ("/usr/sbin/nginx" if os.path.exists("/usr/sbin/nginx") else None)
    )
    if not found:
        raise UserError(
            "nginx is not installed; install it (apt-get install nginx-light or nginx) and restart mipart-agent"
        )
    return found


@dataclass(frozen=True)
class NginxFiles:
    """One nginx layer's files, under its prefix (its working directory too: nginx.procs)."""

    prefix: Path
    layer: Layer = BACK

    @classmethod
    def of(cls, layer: Layer, run_dir: Path | None = None) -> NginxFiles:
        return cls(nginx_front_prefix(run_dir) if layer == FRONT else nginx_prefix(run_dir), layer)

    @property
    def unit(self) -> str:
        """Its systemd unit (the process runner names its log after it)."""
        return NGINX_FRONT_UNIT if self.layer == FRONT else NGINX_UNIT

    @property
    def conf(self) -> Path:
        return self.prefix / "nginx.conf"

    @property
    def candidate(self) -> Path:
        return self.prefix / "nginx.conf.new"

    @property
    def rejected(self) -> Path:
        return self.prefix / "nginx.conf.rejected"

    @property
    def handed(self) -> Path:
        """The generation of the config nginx was last told to run (written after the reload or start)."""
        return self.prefix / "nginx.conf.handed"

    @property
    def upstream_log(self) -> Path:
        return self.prefix / UPSTREAM_LOG

    def argv(self) -> list[str]:
        return [nginx_binary(), "-c", str(self.conf), "-p", str(self.prefix), "-g", "daemon off;"]


def unix_listeners(text: str) -> tuple[str, ...]:
    """The unix socket paths a config listens on."""
    return tuple(UNIX_LISTEN.findall(text))


class NginxRejected(Exception):
    """nginx -t refused a config; the message is nginx's own last line."""


def check_config(files: NginxFiles, path: Path) -> None:
    done = subprocess.run(
        [nginx_binary(), "-t", "-q", "-c", str(path), "-p", str(files.prefix), "-g", "daemon off;"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    if done.returncode != 0:
        lines = (
            [line for line in done.stderr.splitlines() if "emerg" in line or "error" in line]
            or done.stderr.splitlines()
            or ["no output"]
        )
        raise NginxRejected(lines[-1].strip())


def install_config(files: NginxFiles, text: str) -> None:
    """Validate then swap in `text`; nothing to do when it equals what is there already."""
    for name in TEMP_DIRS:  # a request body over 1 MiB waits here: its workers' alone (nginx chowns them to them)
        (files.prefix / name).mkdir(mode=TEMP_MODE, parents=True, exist_ok=True)
    try:
        if files.conf.read_text() == text:
            return
    except FileNotFoundError:
        pass
    write_atomic(files.candidate, text)
    try:
        check_config(files, files.candidate)
    except NginxRejected:
        os.replace(files.candidate, files.rejected)
        raise
    os.replace(files.candidate, files.conf)
