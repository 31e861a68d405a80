"""The agent's profile: read and checked at start and on SIGHUP; a bad one never replaces a good one."""

from __future__ import annotations

from pathlib import Path

from mipart.profile import load_profile
from mipart.profile.load import ProfileError
from mipart.profile.schema import INSTANCE_PORT_SPAN, Profile

EPHEMERAL_RANGE = Path("/proc/sys/net/ipv4/ip_local_port_range")


def read_profile(path: str, log, kept_digest: str) -> tuple[Profile | None, str]:
    """(profile, "") when valid; else (None, its first problem), every problem logged."""
    try:
        profile = load_profile(path)
    except ProfileError as exc:
        lines = str(exc).splitlines()
        for line in lines:
            log.error("profile.invalid", problem=line, kept=kept_digest[:12] or "none")
        return None, lines[0]
    warn_ephemeral_ports(profile, log)
    return profile, ""


def warn_ephemeral_ports(profile: Profile, log, range_file: Path = EPHEMERAL_RANGE) -> None:
    """Ports inside the kernel's ephemeral range can be taken by any outgoing connection."""
    try:
        low, high = map(int, range_file.read_text().split())
    except (OSError, ValueError):
        return
    base = profile.instances.base_port
    if base <= high and base + INSTANCE_PORT_SPAN - 1 >= low:
        log.warning("profile.ephemeral_ports", ports=f"{base}-{base + INSTANCE_PORT_SPAN - 1}", ephemeral=f"{low}-{high}",
                    advice="instances may fail to bind after a restart; choose instances.base_port below the ephemeral range (net.ipv4.ip_local_port_range)")
