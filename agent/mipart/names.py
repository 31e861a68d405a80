"""The names mipart is known by outside Python: units, files, env vars, the API address.

Each is spelled here once; systemd units, docs and tests use the same words.
"""

from __future__ import annotations

INSTANCE_UNIT_PREFIX = "mipart-vllm@"
INSTANCE_PATTERN = f"{INSTANCE_UNIT_PREFIX}*.service"
NGINX_UNIT = "mipart-nginx.service"  # the back layer: reloaded on every membership change
NGINX_FRONT_UNIT = "mipart-nginx-front.service"  # the front layer: holds the clients' connections
NGINX_UNITS = (NGINX_UNIT, NGINX_FRONT_UNIT)
AGENT_UNIT = "mipart-agent.service"

DEFAULT_PROFILE = "/etc/mipart/profile.yaml"
DEFAULT_RUN_DIR = "/run/mipart"
# What lives with the servers, apart from the agent's run dir, which the agent writes again when
# it is deleted (docs/faults.md): each instance's socket directory and the launchers' records.
DEFAULT_SERVING_DIR = "/run/mipart-vllm"
DEFAULT_STATE_DIR = "/var/lib/mipart"  # survives reboots: the default model cache, each instance's HOME
# Under the state dir: the host is drained while this file is there (`mipart drain`, readiness.py); a reboot keeps it.
DRAIN_FILE = "drain.json"
# What every service listener answers fleet load balancers: 200 while the host serves, 503 when it will not.
READY_PATH = "/mipart/ready"
# Under the run dir: the profile `mipart bench sweep` runs a layout with; read before --profile when present.
PROFILE_OVERRIDE = "profile.override.yaml"
SWEEP_LOCK = "bench-sweep.lock"  # held (flock) by the one sweep that owns the override
# Under the serving dir: instance N listens on SOCKETS_DIR/N/INSTANCE_SOCKET, a directory only the
# instance and nginx's workers may enter (serving/dirs.py, docs/security.md); LAUNCHED_DIR holds
# the launchers' records (runners/records.py).
SOCKETS_DIR = "sockets"
INSTANCE_SOCKET = "http.sock"
# How long a kept connection to an instance may sit idle, by whoever keeps it (the agent's probes,
# the back nginx): under uvicorn's timeout_keep_alive, 5 s, which vLLM's server keeps, so the
# server never closes one as a request is sent on it (docs/vllm-nginx.md).
INSTANCE_KEEP_IDLE_S = 4
LAUNCHED_DIR = "launched"
# nginx's workers run as this user (nginx.conf's `user` line), and the instances' socket
# directories belong to its group: Debian's base-passwd has www-data on every host.
NGINX_WORKER_USER = "www-data"
# A native server of a non-root instances.user runs as uid INSTANCE_UID_BASE + N, a uid of its
# own (no other instance can read its environment or signal it), with that user's groups. The
# range lies in what systemd leaves unused (65536-524287, its "Users, Groups, UIDs and GIDs" page) and below
# the subordinate ids useradd hands out (SUB_UID_MIN 100000): N is a logical GPU slot below 72
# (gpu.modes.LOGICAL_SLOTS), so 70000-70071. The launcher refuses a uid that /etc/passwd gives to someone.
INSTANCE_UID_BASE = 70000
DEFAULT_SYSFS_ROOT = "/sys"
# In a root that is no real host (a simulated one): the file naming its GPU backend (mipart.gpu).
BACKEND_MARKER = ".mipart-backend"
DEFAULT_API_LISTEN = "127.0.0.1:8049"  # loopback only, unless the profile says otherwise
CONTAINER_RUNTIMES = ("docker", "podman")  # clients that run as root and get a fixed environment

# Environment the launcher and runners use. The tags name a server's instance and run dir for
# people and test cleanup; mipart itself trusts no environment (runners/records.py).
RUN_DIR_VAR = "MIPART_RUN_DIR"
SERVING_DIR_VAR = "MIPART_SERVING_DIR"
STATE_DIR_VAR = "MIPART_STATE_DIR"
SYSFS_ROOT_VAR = "MIPART_SYSFS_ROOT"
RELOAD_CMD_VAR = "MIPART_RELOAD_CMD"
RELOAD_TIMEOUT_VAR = "MIPART_RELOAD_TIMEOUT"
INSTANCE_VAR = "MIPART_INSTANCE"
DEVICES_VAR = "MIPART_DEVICES"  # on a simulated host only: the device files the server holds open
# On a simulated host only: the device files a server's device cgroup allows (the simulator cannot
# see cgroups; the launcher declares what the unit's DeviceAllow= gives); absent: unconfined.
DEVICE_CGROUP_VAR = "MIPART_DEVICE_CGROUP"
RESERVED_ENV_PREFIX = "MIPART_"  # mipart's own variables: never the profile's
# Set by mipart for each instance (its GPUs, its model cache): neither `env` nor an env file may.
VISIBLE_DEVICE_VARS = ("CUDA_VISIBLE_DEVICES", "HIP_VISIBLE_DEVICES", "ROCR_VISIBLE_DEVICES")
CACHE_VAR = "HF_HOME"

# What an operator runs to apply an edited `gpus:` while mipart serves (docs/repartition.md).
REPARTITION_COMMAND = f"systemctl reload {AGENT_UNIT.removesuffix('.service')}"


def instance_name(number: int) -> str:
    """`mipart-vllm@N`, as people type it and logs show it."""
    return f"{INSTANCE_UNIT_PREFIX}{number}"


def instance_uid(number: int) -> int:
    return INSTANCE_UID_BASE + number


def instance_unit(number: int) -> str:
    return f"{instance_name(number)}.service"


def instance_number(unit: str) -> int | None:
    """N of `mipart-vllm@N.service`; None for any other name."""
    if not (unit.startswith(INSTANCE_UNIT_PREFIX) and unit.endswith(".service")):
        return None
    number = unit[len(INSTANCE_UNIT_PREFIX) : -len(".service")]
    return int(number) if number.isdigit() and number.isascii() else None
