"""The status responses, defined once: /v1/status, /v1/instances and /v1/instances/{n}, and the errors.

Each carries api_version (API_VERSION). It goes up when a field is removed or changes
meaning; adding a field keeps it. openapi.yaml describes exactly these types (a unit
test checks that every field is there, with its type, and nothing else). The agent writes
them (to_json_text); `mipart status`, the bench and the simulated host read them back with
from_json (api.reader), so the two sides cannot drift apart.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, fields
from datetime import datetime, timezone
from functools import cache
from typing import Any, ClassVar, TypeVar

from mipart.api.reader import read_json

API_VERSION = 2  # 2: an instance has no port; its address is unix:PATH

R = TypeVar("R", bound="Response")


def iso_utc(timestamp: float | None) -> str | None:
    """Times in responses: ISO 8601 UTC to the second; None when unknown (or 0)."""
    if not timestamp:
        return None
    return datetime.fromtimestamp(timestamp, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def to_json_text(response: object) -> str:
    # Compact: CPython's C encoder runs only without indent (4x cheaper for /v1/instances).
    return json.dumps(to_json(response)) + "\n"


def to_json(value: object) -> Any:
    """JSON values of a response; dataclasses.asdict would deep-copy, at twice the cost."""
    if value is None or type(value) in (str, int, bool, float):
        return value
    if isinstance(value, (tuple, list)):
        return [to_json(v) for v in value]
    if isinstance(value, dict):
        return {k: to_json(v) for k, v in value.items()}
    return {name: to_json(getattr(value, name)) for name in _field_names(type(value))}


@cache
def _field_names(cls: Any) -> tuple[str, ...]:
    return tuple(f.name for f in fields(cls))


class Response:
    """A response of its own path: read back from parsed JSON by its fields (api.reader)."""

    path: ClassVar[str]

    @classmethod
    def from_json(cls: type[R], data: object) -> R:
        """ContractError, one line naming the path and the field, for another api_version or shape."""
        return read_json(cls, data, cls.path)


@dataclass(frozen=True)
class Instance(Response):
    path: ClassVar[str] = "/v1/instances/{n}"
    api_version: int = field(default=API_VERSION, kw_only=True)
    number: int
    unit: str
    service: str
    model: str  # the served model name
    state: str  # one of health.states.STATES
    ready: bool  # in nginx rotation
    since: str | None  # when the state last changed
    last_error: str
    restarts: int  # by the agent since it started
    address: str  # unix:PATH, where nginx reaches it
    devices: tuple[str, ...]
    logical_gpus: tuple[int, ...]
    physical_gpus: tuple[int, ...]
    active_state: str | None  # the unit's; None when unknown
    sub_state: str | None


@dataclass(frozen=True)
class Instances(Response):
    path: ClassVar[str] = "/v1/instances"
    api_version: int = field(default=API_VERSION, kw_only=True)
    instances: tuple[Instance, ...]


@dataclass(frozen=True)
class ServiceRouting:
    policy: str  # least_conn, random (two least_conn) or affinity (docs/routing.md)
    header: str | None  # affinity: the request header hashed; None otherwise


@dataclass(frozen=True)
class Service:
    name: str
    model: str  # the served model name
    listen: str  # host:port, [v6]:port or unix:PATH, as nginx listens
    routing: ServiceRouting
    instances: int
    ready: int  # in nginx rotation


@dataclass(frozen=True)
class ProfileInfo:
    path: str
    digest: str
    loaded: bool
    override: str  # the profile override in force instead of `path` (mipart bench sweep's); "" when none


@dataclass(frozen=True)
class PartitionGpu:
    index: int
    bdf: str
    compute: str
    memory: str
    compute_want: str | None  # None: the profile leaves it as is
    memory_want: str | None
    matches: bool
    logical_gpus: tuple[int, ...]


@dataclass(frozen=True)
class PairRule:
    compute: str
    memory: tuple[str, ...]  # the memory modes this compute mode runs under


@dataclass(frozen=True)
class PartitionRules:
    """One pair table of the host's kernel and the GPUs it holds for (kernels differ: docs/partitioning.md)."""

    gpus: tuple[int, ...]
    source: str  # "kernel" (compute_partition_config/), or "mainline fallback (why)"
    pairs: tuple[PairRule, ...]


@dataclass(frozen=True)
class Partition:
    matches: bool | None  # None: unknown
    error: str
    logical_gpus: int
    gpus: tuple[PartitionGpu, ...]
    drift: bool  # the host's layout differs from the profile's gpus: (a manual change, a failed apply)
    action: str  # what to run about the drift; "" when there is none or a repartition runs
    rules: tuple[PartitionRules, ...]  # the pair tables plans are checked against
    warnings: tuple[str, ...]  # known traps seen on the host, one line each (e.g. a BMC's `ast` hiding partitions)
    pending_memory: str  # a memory request mipart wrote that no driver reload applied yet, in one line; "" if none


@dataclass(frozen=True)
class Repartition:
    """The agent's repartition while serving (a reload with gpus: changed): the one running, or the last."""

    phase: str  # notice (readiness 503 first), draining, stopping, applying, starting, or rolling (one GPU step
    # at a time); "" when none runs
    started: str | None
    finished: str | None
    error: str  # what the last one failed on, or where a rolling one stopped; "" when it worked or none ran
    step: str = ""  # rolling: the step running, e.g. "step 2 of 4 (GPU 1)"; "" otherwise


@dataclass(frozen=True)
class LastApply:
    time: str | None
    ok: bool
    error: str
    profile_digest: str
    result: dict[str, Any] | None  # partition.apply.ApplyResult as recorded


@dataclass(frozen=True)
class InstanceCounts:
    """total, and one count per health state (health.states.STATES)."""

    total: int
    ready: int
    degraded: int
    starting: int
    unhealthy: int
    restarting: int
    draining: int
    failed: int

    @property
    def in_rotation(self) -> int:
        """Ready and degraded (still served by nginx): how `mipart status` and STATUS= count ready."""
        return self.ready + self.degraded


@dataclass(frozen=True)
class NginxLayer:
    """One nginx layer: the back (the fields of `nginx` itself) or the front (`nginx.front`)."""

    config_valid: bool
    error: str
    running: bool | None
    generation: str  # of the nginx.conf installed last
    serving_generation: str  # the one nginx's accepting workers run; "" until known
    current: bool  # nginx serves the installed config, and no stray worker serves an older one
    stray_workers: int  # nginx workers of ours serving without their master (a frozen config)
    problem: str  # what is wrong with the nginx in force; "" when nothing is


@dataclass(frozen=True)
class Nginx(NginxLayer):
    """The back layer, which lists the instances and is reloaded on every membership change, and the front."""

    front: NginxLayer  # holds the clients' connections; reloaded on a change of listeners only


@dataclass(frozen=True)
class Reconcile:
    last: str | None
    error: str


@dataclass(frozen=True)
class Readiness:
    """What every service listener answers fleet load balancers on the readiness path (mipart.readiness)."""

    ready: bool
    reason: str | None  # "drained: ..." or "host-wide change: ..."; None when ready
    since: str | None
    drained: bool  # `mipart drain` took the host out


@dataclass(frozen=True)
class Status(Response):
    path: ClassVar[str] = "/v1/status"
    api_version: int = field(default=API_VERSION, kw_only=True)
    version: str  # the agent's
    profile: ProfileInfo
    profile_error: str
    partition: Partition
    repartition: Repartition
    last_apply: LastApply | None
    instances: InstanceCounts
    services: tuple[Service, ...]
    nginx: Nginx
    reconcile: Reconcile
    units_error: str
    files_error: str  # a file the agent could not write under its run dir (retried with backoff)
    readiness: Readiness


@dataclass(frozen=True)
class ErrorDetail:
    code: int  # the HTTP status, 400-599
    message: str


@dataclass(frozen=True)
class ErrorBody:
    """Every error the API answers, on any path (read back with api.reader.read_json)."""

    error: ErrorDetail
