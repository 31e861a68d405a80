"""What the agent knows at one moment, copied out of it: the status API, `mipart status`
(through the API), the metrics and the STATUS= line read this, never the agent's fields.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace

from mipart.health.machine import InstanceHealth
from mipart.health.states import IN_ROTATION, STARTING, STATES
from mipart.profile.schema import ServiceSpec
from mipart.serving.spec import InstanceSpec


@dataclass
class LayerState:
    """One nginx layer's last outcomes (daemon.nginx_layer): the back, reloaded on membership, or the front."""

    error: str = ""  # nginx -t refused the last config ("" when it took it)
    generation: str = ""  # of the config installed last
    serving: str = ""  # the generation its accepting workers run ("" until known)
    strays: int = 0  # its workers accepting without their master
    overdue: bool = False  # the last reload has not taken within nginx_layer.SWITCH_LIMIT
    files_error: str = ""  # writing its config or starting it failed (retried)

    @property
    def current(self) -> bool:
        """It serves the config installed last, and only nginx of ours does (False while a reload takes)."""
        return bool(self.generation) and self.serving == self.generation and not self.strays

    @property
    def problem(self) -> str:
        """What is wrong with the nginx in force, in one phrase; "" when nothing is (or a reload is still taking)."""
        if self.strays:
            return f"{self.strays} nginx workers serve a frozen config without their master"
        if self.overdue:
            return f"nginx still serves config generation {self.serving or 'unknown'}, not {self.generation}"
        return ""


@dataclass
class AgentStatus:
    """The agent's last outcomes, kept up to date by the agent itself."""

    profile_digest: str = ""
    profile_error: str = ""
    profile_override: str = ""  # the override in force (mipart bench sweep's, under the run dir); "" when none
    last_reconcile: float = 0.0
    reconcile_error: str = ""
    nginx: LayerState = field(default_factory=LayerState)  # the back layer, which lists the instances
    front: LayerState = field(default_factory=LayerState)  # the front layer, which holds clients' connections
    spec_files_error: str = ""  # writing instance spec files failed (retried)
    api_error: str = ""  # the status API could not listen (retried: daemon.loop.keep_api)

    repartition_phase: str = ""  # daemon.repartition's step while one runs
    repartition_started: float = 0.0
    repartition_finished: float = 0.0
    repartition_error: str = ""  # what the last one failed on ("" when it worked, or none ran)

    @property
    def files_error(self) -> str:
        return self.nginx.files_error or self.front.files_error or self.spec_files_error

    def copy(self) -> AgentStatus:
        return replace(self, nginx=replace(self.nginx), front=replace(self.front))


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
    services: tuple[ServiceSpec, ...] = ()  # the profile's in force

    @classmethod
    def of(
        cls,
        profile_path: str,
        profile_loaded: bool,
        status: AgentStatus,
        specs: Mapping[int, InstanceSpec],
        health: Mapping[int, InstanceHealth],
        stopping: bool = False,
        services: tuple[ServiceSpec, ...] = (),
    ) -> AgentSnapshot:
        views = {n: InstanceView.of(specs[n], health.get(n)) for n in sorted(specs)}
        return cls(str(profile_path), profile_loaded, status.copy(), views, stopping, services)

    @property
    def ready_count(self) -> int:
        return sum(1 for view in self.instances.values() if view.in_rotation)

    def counts(self) -> dict[str, int]:
        """Instances per state, every state present."""
        counts = dict.fromkeys(STATES, 0)
        for view in self.instances.values():
            counts[view.state] += 1
        return counts
