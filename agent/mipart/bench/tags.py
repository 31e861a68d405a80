"""What a bench run is tagged with: the profile, the partition layout (read through mipart.gpu), engines, versions,
host.

A figure is only worth comparing when one can tell what produced it; fake engines are said
plainly, in the tag and in the comparison's legend.
"""

from __future__ import annotations

import http.client
import json
import os
import platform
import socket
from collections import Counter

from mipart.profile.schema import Listen, ServiceSpec
from mipart.values import HostState

FAKE_ENGINE_MODULE = "mipart.sim.engine"
FAKE_ENGINE = f"fake engine ({FAKE_ENGINE_MODULE})"


def layout_of(state: HostState) -> str:
    """'8 x DPX/NPS2 (16 logical GPUs)'; mixed modes list each group, most GPUs first."""
    groups = Counter(f"{g.compute}/{g.memory or '-'}" for g in state.physical)
    if not groups:
        return "no GPUs found"
    text = ", ".join(f"{count} x {mode}" for mode, count in groups.most_common())
    return f"{text} ({len(state.logical)} logical GPUs)"


def read_layout() -> str:
    from mipart.gpu import discover

    try:
        return layout_of(discover())
    except (OSError, LookupError, ValueError) as exc:
        return f"unread ({exc})"


def is_fake(service: ServiceSpec) -> bool:
    return FAKE_ENGINE_MODULE in service.command


def client_address(listen: Listen) -> tuple[str, int]:
    """Where a client on this host reaches a listener: a wildcard address is reached on loopback."""
    host = {"0.0.0.0": "127.0.0.1", "::": "::1", "*": "127.0.0.1", "": "127.0.0.1"}.get(listen.host, listen.host)
    return host, listen.port


def engine_of(service: ServiceSpec, timeout: float = 5.0) -> str:
    """The fake engine by its command; vLLM by its own word (GET /version through the listener)."""
    if is_fake(service):
        return FAKE_ENGINE
    host, port = client_address(service.listen)
    try:
        conn = http.client.HTTPConnection(host, port, timeout=timeout)
        conn.request("GET", "/version")
        response = conn.getresponse()
        version = json.loads(response.read()).get("version") if response.status == 200 else None
        conn.close()
    except (OSError, ValueError, AttributeError):
        version = None
    return f"vLLM {version}" if isinstance(version, str) else f"{' '.join(service.command)} (no version at /version)"


def engines_of(services: list[ServiceSpec]) -> str:
    return ", ".join(dict.fromkeys(engine_of(s) for s in services))


def host_of() -> str:
    return f"{socket.gethostname()} ({platform.machine()}, {os.cpu_count()} CPUs, Linux {platform.release()})"
