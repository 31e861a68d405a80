"""What the agent knows at one moment, copied out of it: the status API, `mipart status`
(through the API), the metrics and the STATUS= line read this, never the agent's fields.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace

from mipart.health.machine import InstanceHealth
from mipart.health.states import IN_ROTATION, STARTING, STATES
from mipart.serving.spec import InstanceSpec


@dataclass
class AgentStatus:
    """The agent's last outcomes, kept up to date by the agent itself."""

    profile_digest: str = ""
    profile_error: str = ""
    nginx_error: str = ""
    last_reconcile: float = 0.0
    reconcile_error: str = ""


def instance_state(h: InstanceHealth | None) -> str:
    """The health state machine's word for an instance; starting until it has a health record."""
    return h.state if h is not None else STARTING


def gpu_label(spec: InstanceSpec) -> str:
    """The instance's logical GPUs as logs and metric labels show them: "3" or "2,3"."""
    return ",".join(map(str, spec.logical_gpus))


@dataclass(frozen=True)
class InstanceView:
    """One instance: its spec and a copy of its health."""

    spec: InstanceSpec
    state: str
    since: float | None  # wall clock of the last state change; None: no health record yet
    last_error: str
    restarts: int  # by the agent, since it started

    @property
    def in_rotation(self) -> bool:
        return self.state in IN_ROTATION

    @classmethod
    def of(cls, spec: InstanceSpec, h: InstanceHealth | None) -> InstanceView:
        if h is None:
            return cls(spec, instance_state(h), None, "", 0)
        return cls(spec, h.state, h.since, h.last_error, h.restarts_total)


@dataclass(frozen=True)
class AgentSnapshot:
    profile_path: str
    profile_loaded: bool  # False until a valid profile was loaded
    status: AgentStatus  # a copy
    instances: Mapping[int, InstanceView]  # every instance the profile asks for, by number, in order
    stopping: bool = False

    @classmethod
    def of(cls, profile_path: str, profile_loaded: bool, status: AgentStatus, specs: Mapping[int, InstanceSpec],
           health: Mapping[int, InstanceHealth], stopping: bool = False) -> AgentSnapshot:
        views = {n: InstanceView.of(specs[n], health.get(n)) for n in sorted(specs)}
        return cls(str(profile_path), profile_loaded, replace(status), views, stopping)

    @property
    def ready_count(self) -> int:
        return sum(1 for view in self.instances.values() if view.in_rotation)

    def counts(self) -> dict[str, int]:
        """Instances per state, every state present."""
        counts = dict.fromkeys(STATES, 0)
        for view in self.instances.values():
            counts[view.state] += 1
        return counts
