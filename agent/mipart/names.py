"""The names mipart is known by outside Python: units, files, env vars, the API address.

Each is spelled here once; systemd units, docs and tests use the same words.
"""

from __future__ import annotations

INSTANCE_UNIT_PREFIX = "mipart-vllm@"
INSTANCE_PATTERN = f"{INSTANCE_UNIT_PREFIX}*.service"
NGINX_UNIT = "mipart-nginx.service"
AGENT_UNIT = "mipart-agent.service"

DEFAULT_PROFILE = "/etc/mipart/profile.yaml"
DEFAULT_RUN_DIR = "/run/mipart"
# Under the run dir: the profile `mipart bench sweep` runs a layout with; read before --profile when present.
PROFILE_OVERRIDE = "profile.override.yaml"
SWEEP_LOCK = "bench-sweep.lock"  # held (flock) by the one sweep that owns the override
DEFAULT_SYSFS_ROOT = "/sys"
# In a root that is no real host (a simulated one): the file naming its GPU backend (mipart.gpu).
BACKEND_MARKER = ".mipart-backend"
DEFAULT_API_LISTEN = "127.0.0.1:8049"  # loopback only, unless the profile says otherwise
CONTAINER_RUNTIMES = ("docker", "podman")  # clients that run as root and get a fixed environment

# Environment the launcher and runners use; the tags let the agent find, from /proc alone,
# which server runs which instance spec.
RUN_DIR_VAR = "MIPART_RUN_DIR"
SYSFS_ROOT_VAR = "MIPART_SYSFS_ROOT"
RELOAD_CMD_VAR = "MIPART_RELOAD_CMD"
RELOAD_TIMEOUT_VAR = "MIPART_RELOAD_TIMEOUT"
INSTANCE_VAR = "MIPART_INSTANCE"
DIGEST_VAR = "MIPART_SPEC_DIGEST"
DEVICES_VAR = "MIPART_DEVICES"  # on a simulated host only: the device files the server holds open
# On a simulated host only: the device files a server's device cgroup allows (the simulator cannot
# see cgroups; the launcher declares what the unit's DeviceAllow= gives); absent: unconfined.
DEVICE_CGROUP_VAR = "MIPART_DEVICE_CGROUP"
RESERVED_ENV_PREFIX = "MIPART_"  # the runner finds servers by these tags in /proc/PID/environ
# Set by mipart for each instance (its GPUs, its model cache): neither `env` nor an env file may.
VISIBLE_DEVICE_VARS = ("CUDA_VISIBLE_DEVICES", "HIP_VISIBLE_DEVICES", "ROCR_VISIBLE_DEVICES")
CACHE_VAR = "HF_HOME"

# What an operator runs to apply an edited `gpus:` while mipart serves (docs/repartition.md).
REPARTITION_COMMAND = f"systemctl reload {AGENT_UNIT.removesuffix('.service')}"


def instance_name(number: int) -> str:
    """`mipart-vllm@N`, as people type it and logs show it."""
    return f"{INSTANCE_UNIT_PREFIX}{number}"


def instance_unit(number: int) -> str:
    return f"{instance_name(number)}.service"


def instance_number(unit: str) -> int | None:
    """N of `mipart-vllm@N.service`; None for any other name."""
    if not (unit.startswith(INSTANCE_UNIT_PREFIX) and unit.endswith(".service")):
        return None
    number = unit[len(INSTANCE_UNIT_PREFIX) : -len(".service")]
    return int(number) if number.isdigit() and number.isascii() else None
