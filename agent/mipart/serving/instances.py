"""Profile + discovered logical GPUs -> one instance spec per server: pure, no I/O.

Instance N is the server whose first logical GPU is N (`mipart-vllm@N`), listening on
its unix socket `<serving dir>/sockets/N/http.sock` (vLLM's `--uds`). Logical GPU numbers are
mipart's slots (gpu.modes.logical_number): N is partition N % 8 of physical GPU N // 8, before
and after any switch or reload, with gaps where a GPU has fewer partitions. A spec holds
everything the launcher needs, so a changed spec (and only that) is a reason to restart an
instance.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from mipart.errors import UserError
from mipart.gpu.modes import PARTITION_SLOTS
from mipart.names import CACHE_VAR, CONTAINER_RUNTIMES, DEFAULT_SERVING_DIR, SOCKETS_DIR
from mipart.paths import instance_socket
from mipart.profile.indices import format_indices
from mipart.profile.schema import MAX_INSTANCES, Profile, ServiceSpec
from mipart.serving.spec import CONTAINER_HF_HOME, InstanceSpec
from mipart.values import LogicalGpu

# AMD's vLLM tuning guide (docs/vllm-nginx.md): overridable defaults for every instance.
ROCM_ENV_DEFAULTS = (
    ("VLLM_ROCM_USE_AITER", "1"),
    ("HIP_FORCE_DEV_KERNARG", "1"),
    ("TORCH_BLAS_PREFER_HIPBLASLT", "1"),
)
MULTI_GPU_ENV_DEFAULTS = (("NCCL_MIN_NCHANNELS", "112"),)
CONTAINER_SHM = "16g"
# docker has no --umask: the server in the container makes its socket under this umask, so
# nginx's workers (the socket directory's group) may connect to it (serving/sockets.py).
CONTAINER_UMASK = ["sh", "-c", 'umask 0007 && exec "$@"', "mipart-vllm"]
HOST_SOCKETS = Path(DEFAULT_SERVING_DIR) / SOCKETS_DIR
MAX_SOCKET_PATH = 107  # sun_path holds 108 bytes with the terminating NUL (unix(7))


class InstancePlanError(UserError):
    pass


def plan_instances(
    profile: Profile,
    logical: tuple[LogicalGpu, ...],
    sockets: Path = HOST_SOCKETS,
    layout: Mapping[int, str] | None = None,
) -> tuple[InstanceSpec, ...]:
    """Raises InstancePlanError when the profile does not fit this host's logical GPUs.

    sockets: the serving dir's sockets directory (paths.sockets_dir), where each instance listens;
    layout: physical GPU -> its compute mode, which a refusal names."""
    by_number = {g.index: g for g in logical}
    specs: list[InstanceSpec] = []
    for service in profile.services:
        numbers = _service_partitions(service, by_number, layout or {})
        tp = service.tensor_parallel
        for start in range(0, len(numbers), tp):
            group = numbers[start : start + tp]
            specs.append(_instance(profile, service, tuple(by_number[n] for n in group), sockets))
    return tuple(sorted(specs, key=lambda s: s.number))


def _service_partitions(service: ServiceSpec, by_number: dict[int, LogicalGpu], layout: Mapping[int, str]) -> list[int]:
    if service.partitions is None:
        numbers = sorted(by_number)
    else:
        missing = [n for n in service.partitions if n not in by_number]
        if missing:
            raise InstancePlanError(
                f"services.{service.name}.partitions names logical GPU {format_indices(missing)}, which this host does "
                f"not have{_in_layout(layout)}: {_its_numbers(by_number)}; N = {PARTITION_SLOTS} x GPU + partition "
                f"(mipart-vllm@N is partition N % {PARTITION_SLOTS} of GPU N // {PARTITION_SLOTS})"
            )
        numbers = list(service.partitions)
    if not numbers:
        raise InstancePlanError(
            f"services.{service.name} has no logical GPU on this host; check that amdgpu is loaded and gpus: is applied"
        )
    if len(numbers) % service.tensor_parallel:
        raise InstancePlanError(
            f"services.{service.name}.tensor_parallel {service.tensor_parallel} does not divide its {len(numbers)} "
            "logical GPUs on this host; "
            f"use a divisor of {len(numbers)}"
        )
    return numbers


def _its_numbers(by_number: dict[int, LogicalGpu]) -> str:
    return f"its logical GPUs are {format_indices(by_number)}" if by_number else "it has no logical GPUs"


def _in_layout(layout: Mapping[int, str]) -> str:
    """' in DPX', or ' in DPX (GPUs 0-5), CPX (GPUs 6-7)' for a mixed host; '' when unknown."""
    by_mode: dict[str, list[int]] = {}
    for index, mode in sorted(layout.items()):
        by_mode.setdefault(mode, []).append(index)
    if len(by_mode) == 1:
        return f" in {next(iter(by_mode))}"
    return (
        " in " + ", ".join(f"{mode} (GPUs {format_indices(gpus)})" for mode, gpus in by_mode.items()) if by_mode else ""
    )


def _instance(profile: Profile, service: ServiceSpec, group: tuple[LogicalGpu, ...], sockets: Path) -> InstanceSpec:
    number = group[0].index
    if number >= MAX_INSTANCES:
        raise InstancePlanError(
            f"logical GPU {number} is past the {MAX_INSTANCES} instances mipart serves (logical GPUs 0-"
            f"{MAX_INSTANCES - 1}); this host has more logical GPUs than mipart supports"
        )
    socket = str(instance_socket(number, sockets))
    if len(socket.encode()) > MAX_SOCKET_PATH:
        raise InstancePlanError(
            f"instance {number}'s socket {socket} is longer than {MAX_SOCKET_PATH} bytes, the most a unix socket path "
            "may be (unix(7)); use a shorter serving dir (MIPART_SERVING_DIR)"
        )
    container = service.runtime in CONTAINER_RUNTIMES
    env = _environment(profile, service, group, container)
    serve = _serve_argv(service, socket)
    if container:
        argv = _container_argv(service, number, socket, group) + CONTAINER_UMASK + serve
    else:
        argv = serve
    return InstanceSpec(
        number=number,
        service=service.name,
        model=service.model,
        served_model_name=service.model_name,
        logical_gpus=tuple(g.index for g in group),
        physical_gpus=tuple(sorted({g.physical_index for g in group})),
        render_nodes=tuple(g.render_node for g in group),
        socket=socket,
        runtime=service.runtime,
        argv=tuple(argv),
        env=env,
        user=None if container else profile.instances.user,
        hf_home=profile.instances.hf_home,
        env_files=service.env_files,
        cache_owner=profile.instances.user if container else None,
        # A native server's ROCm index depends on where it runs and on the live KFD order: the
        # launcher resolves it at each start (serving/visible.py).
        visible_devices_env=None if container else service.visible_devices_env,
    )


def _environment(
    profile: Profile, service: ServiceSpec, group: tuple[LogicalGpu, ...], container: bool
) -> tuple[tuple[str, str], ...]:
    env = dict(ROCM_ENV_DEFAULTS)
    if service.tensor_parallel > 1:
        env.update(MULTI_GPU_ENV_DEFAULTS)
    env.update(service.env)
    if container:  # only its own render nodes exist in there, so ROCm numbers its GPUs 0..k-1
        env[service.visible_devices_env] = ",".join(map(str, range(len(group))))
    env[CACHE_VAR] = CONTAINER_HF_HOME if container else profile.instances.hf_home
    return tuple(sorted(env.items()))


def _serve_argv(service: ServiceSpec, socket: str) -> list[str]:
    """The engine's own command line: command, model, listener, TP, then the user's args."""
    command = [part.replace("{model}", service.model) for part in service.command]
    if not any("{model}" in part for part in service.command):
        command += [service.model] if command[-1:] == ["serve"] else ["--model", service.model]
    command += ["--uds", socket]
    command += ["--served-model-name", service.model_name]
    if service.tensor_parallel > 1:
        command += ["--tensor-parallel-size", str(service.tensor_parallel)]
    return command + list(service.args)


def _container_argv(service: ServiceSpec, number: int, socket: str, group: tuple[LogicalGpu, ...]) -> list[str]:
    """`docker|podman run` with only this instance's GPUs: no --privileged, no whole /dev/dri, no port.

    Its socket directory is mounted at the same path. The env and the model cache are not here:
    the launcher adds env files and the cache as the path it resolved (serving.execenv.client_argv)."""
    argv = [service.runtime, "run", "--rm", "--name", f"mipart-vllm-{number}", "--init"]
    argv += ["--device", "/dev/kfd"]
    for gpu in group:
        argv += ["--device", gpu.render_node]
    argv += ["--group-add", "video", "--shm-size", CONTAINER_SHM]
    directory = str(Path(socket).parent)
    argv += ["-v", f"{directory}:{directory}"]
    return argv + [service.image or ""]
