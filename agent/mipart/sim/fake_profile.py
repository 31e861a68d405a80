"""The profile of a simulated serving host: its two loopback ports, and a profile whose service runs
the fake engine (mipart.sim.engine), written as YAML the way an operator would. The instances
listen on unix sockets under the host's run dir, so they need no port."""

from __future__ import annotations

import json
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Protocol

from mipart.sim.ports import EPHEMERAL_START, free_block

SERVICE = "chat"


@dataclass(frozen=True)
class Ports:
    """The agent's API and the nginx listener: two consecutive loopback ports."""

    api: int
    listen: int

    @classmethod
    def free(cls, low: int = 20000, high: int = EPHEMERAL_START) -> Ports:
        start = free_block(2, low=low, high=high)
        return cls(api=start, listen=start + 1)

    def all(self) -> list[int]:
        return [self.api, self.listen]


class ProfileSource(Protocol):
    """What a host needs of its profile: partition modes, the service's model, its ports, and the YAML text."""

    compute: str
    memory: str
    model: str
    ports: Ports

    def text(self) -> str: ...


@dataclass(frozen=True)
class FakeEngineProfile:
    """A profile whose service `chat` runs the fake engine (mipart.sim.engine).

    Fields are YAML text where the profile has them as such (durations, `args`, `partitions`, `overrides`);
    `partitions`, `args`, `max_restarts`, `hf_home`, `drain_notice`, `overrides` and `rollout` are left out
    of the file when None.
    `services` is more of the profile as data, written as YAML flow: under "chat", fields of
    that service (one named above is replaced, e.g. {"chat": {"routing": "random"}}); under
    any other name, a whole service of that name after it.
    """

    ports: Ports
    compute: str = "DPX"
    memory: str = "NPS2"
    overrides: str | None = None  # gpus.overrides as YAML flow text, e.g. "[{select: [2], compute: DPX}]"
    model: str = "test/fake-llm"
    listen_host: str = "127.0.0.1"
    partitions: str | None = None
    delay: float = 0.5
    tps: float = 50
    args: str | None = "[]"
    interval: str = "500ms"
    timeout: str = "300ms"
    unhealthy_after: int = 2
    restart_backoff: str = "200ms"
    max_restarts: int | None = None
    hf_home: str | None = None
    user: str = "root"  # instances.user: another makes each native server a uid of its own
    drain_notice: str | None = None  # gpus.drain_notice; None leaves the default
    python: str = sys.executable
    services: Mapping[str, Mapping[str, object]] = field(default_factory=dict)
    rollout: str | None = None  # gpus.rollout as YAML flow, e.g. "{max_unavailable: 2}"
    startup_timeout: str | None = None  # health.startup_timeout

    def text(self) -> str:
        engine = [
            self.python,
            "-m",
            "mipart.sim.engine",
            "--startup-delay",
            f"{self.delay}",
            "--tokens-per-second",
            f"{self.tps}",
        ]
        chat = {
            "model": self.model,
            "listen": f'"{self.listen_host}:{self.ports.listen}"',
            "partitions": self.partitions,
            "command": json.dumps(engine),
            "args": self.args,
            **{key: json.dumps(value) for key, value in self.services.get(SERVICE, {}).items()},
        }
        cache = "" if self.hf_home is None else f", hf_home: {json.dumps(self.hf_home)}"
        lines = [
            "version: 1",
            f"gpus: {{compute: {self.compute}, memory: {self.memory}"
            + "".join(
                f", {k}: {v}"
                for k, v in (
                    ("drain_notice", self.drain_notice),
                    ("overrides", self.overrides),
                    ("rollout", self.rollout),
                )
                if v is not None
            )
            + "}",
            "services:",
            f"  {SERVICE}:",
            *(f"    {key}: {value}" for key, value in chat.items() if value is not None),
            *(f"  {name}: {json.dumps(fields)}" for name, fields in self.services.items() if name != SERVICE),
            f"instances: {{user: {self.user}{cache}}}",
            f"health: {{interval: {self.interval}, timeout: {self.timeout}, unhealthy_after: {self.unhealthy_after}, "
            f"restart_backoff: {self.restart_backoff}"
            f"{'' if self.max_restarts is None else f', max_restarts: {self.max_restarts}'}"
            f"{'' if self.startup_timeout is None else f', startup_timeout: {self.startup_timeout}'}}}",
            f'api: {{listen: "127.0.0.1:{self.ports.api}"}}',
        ]
        return "\n".join(lines) + "\n"
