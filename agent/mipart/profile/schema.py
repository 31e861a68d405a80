"""Profile v1 as typed, immutable values: what the rest of mipart consumes."""

from __future__ import annotations

from dataclasses import dataclass, field

from mipart.gpu.modes import LOGICAL_SLOTS
from mipart.names import CONTAINER_RUNTIMES, DEFAULT_API_LISTEN

DEFAULT_HF_HOME = "/var/lib/mipart/huggingface"
# Instance N is a logical GPU slot: 8 per GPU, at most 9 partitionable GPUs a host (gpu.modes),
# so mipart serves instances 0-71 (their uids, names.instance_uid, stay within the range reserved).
MAX_INSTANCES = LOGICAL_SLOTS
RUNTIMES = ("native", *CONTAINER_RUNTIMES)
DEFAULT_NATIVE_COMMAND = ("vllm", "serve")
# vLLM's default --max-num-seqs; sizes nginx when the service does not say otherwise.
DEFAULT_MAX_CONCURRENCY = 256


@dataclass(frozen=True)
class Listen:
    """Where nginx listens for a service: host and port, or (path set) a unix socket."""

    host: str
    port: int
    path: str | None = None

    def __str__(self) -> str:
        if self.path is not None:
            return f"unix:{self.path}"
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


@dataclass(frozen=True)
class GpuOverride:
    select: tuple[int, ...]
    compute: str


@dataclass(frozen=True)
class RolloutSpec:
    """How a compute-only change rolls over the GPUs while the rest serve (docs/repartition.md)."""

    max_unavailable: int = 1  # GPUs switched at once


@dataclass(frozen=True)
class GpuSpec:
    compute: str | None = None
    memory: str | None = None
    select: tuple[int, ...] | None = None  # None = every GPU on the host
    overrides: tuple[GpuOverride, ...] = ()
    client_services: tuple[str, ...] = ()
    drain_notice: float = 10.0  # seconds fleet balancers see readiness 503 before a host-wide change (docs/routing.md)
    rollout: RolloutSpec = RolloutSpec()

    def compute_for(self, gpu_index: int) -> str | None:
        """Desired compute mode of one physical GPU, or None to leave it as is."""
        if self.select is not None and gpu_index not in self.select:
            return None
        for override in self.overrides:
            if gpu_index in override.select:
                return override.compute
        return self.compute


@dataclass(frozen=True)
class GenerationProbe:
    """A one-token completion when the instance has shown no generated token for `idle` seconds:
    /health alone misses a wedged engine (docs/gpu-health.md)."""

    idle: float = 30.0
    timeout: float = 10.0


@dataclass(frozen=True)
class Routing:
    """How nginx picks a service's instance (docs/routing.md): least_conn, random two
    least_conn, or affinity, a consistent hash of one request header, so a conversation
    returns to the instance that holds its prefix cache."""

    policy: str = "least_conn"
    header: str | None = None  # affinity only: the request header whose value picks the instance

    def __str__(self) -> str:
        if self.policy == "affinity":
            return f"affinity on {self.header} (hash consistent)"
        return "random two least_conn" if self.policy == "random" else self.policy


@dataclass(frozen=True)
class ServiceSpec:
    name: str
    model: str
    listen: Listen
    partitions: tuple[int, ...] | None = None  # None = all logical GPUs not used elsewhere
    tensor_parallel: int = 1
    runtime: str = "native"
    image: str | None = None
    command: tuple[str, ...] = DEFAULT_NATIVE_COMMAND
    args: tuple[str, ...] = ()
    env: tuple[tuple[str, str], ...] = ()
    env_files: tuple[str, ...] = ()  # read by the launcher at each start, never copied into a spec
    served_model_name: str | None = None
    visible_devices_env: str = "CUDA_VISIBLE_DEVICES"
    max_concurrency: int = DEFAULT_MAX_CONCURRENCY
    request_timeout: float = 600.0
    generation_probe: GenerationProbe | None = None  # services.NAME.health.generation_probe
    routing: Routing = Routing()

    @property
    def model_name(self) -> str:
        return self.served_model_name or self.model


@dataclass(frozen=True)
class InstancesSpec:
    base_port: int = 8081  # unused since instances listen on unix sockets; still a valid key
    hf_home: str = DEFAULT_HF_HOME
    user: str = "mipart"


@dataclass(frozen=True)
class HealthSpec:
    interval: float = 2.0
    timeout: float = 1.0
    unhealthy_after: int = 3
    startup_timeout: float = 1800.0
    restart_backoff: float = 1.0
    restart_backoff_max: float = 60.0
    max_restarts: int = 5
    queue_depth_limit: int | None = None
    stall_after: float = 60.0  # requests running and no token made this long: wedged (health/progress.py)
    generation_probes: tuple[tuple[str, GenerationProbe], ...] = ()  # by service, from the services' health:

    def generation_probe(self, service: str) -> GenerationProbe | None:
        return dict(self.generation_probes).get(service)


@dataclass(frozen=True)
class ApiSpec:
    listen: str = DEFAULT_API_LISTEN  # or "unix:/run/mipart/api.sock"


@dataclass(frozen=True)
class Profile:
    version: int = 1
    gpus: GpuSpec = field(default_factory=GpuSpec)
    services: tuple[ServiceSpec, ...] = ()
    instances: InstancesSpec = field(default_factory=InstancesSpec)
    health: HealthSpec = field(default_factory=HealthSpec)
    api: ApiSpec = field(default_factory=ApiSpec)
    source: str = ""
    digest: str = ""
