"""Read and validate a profile, reporting every problem as `PATH:LINE:COL: what; what is right`.

Validation works on YAML nodes (not plain data) so each problem points at its line,
and it keeps going after a problem so that one run shows all of them. Any file gets an
answer in bounded time (see profile.source); nothing in here raises but ProfileError.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import replace

import yaml

from mipart.profile import durations
from mipart.profile import fields as f
from mipart.profile.problems import Problem, ProfileError
from mipart.profile.schema import INSTANCE_PORT_SPAN, ApiSpec, GpuSpec, HealthSpec, InstancesSpec, Profile
from mipart.profile.services import build_service, check_ports, check_services
from mipart.profile.source import compose, decode, read_profile_bytes

# Bounds of the health durations: what the agent's loop can keep, up to what still makes sense.
HEALTH_BOUNDS = {
    "interval": durations.Bounds(1, durations.HOUR_MS),
    "timeout": durations.Bounds(1, durations.HOUR_MS),
    "startup_timeout": durations.Bounds(1000, durations.DAY_MS),
    "restart_backoff": durations.Bounds(1, durations.HOUR_MS),
    "restart_backoff_max": durations.Bounds(1, durations.DAY_MS),
}
# The backoff doubles per restart: 2**1000 still fits a float, and nobody waits that many out.
MAX_RESTARTS = 1000


def read_profile_text(path: str) -> str:
    """Read the file, turning every OS-level failure into one clear line."""
    return decode(read_profile_bytes(path), path)


def load_profile(path: str) -> Profile:
    """Load and validate; raises ProfileError listing every problem."""
    text = read_profile_text(path)
    return check_profile(text, path)


def check_profile(text: str, path: str = "<profile>") -> Profile:
    problems: list[Problem] = []
    root = compose(text, path)
    checker = f.Checker(problems)
    profile = _check_root(checker, root)
    if problems:
        raise ProfileError(path, problems)
    digest = hashlib.sha256(text.encode()).hexdigest()
    return replace(profile, source=os.path.abspath(path) if path != "<profile>" else path, digest=digest)


TOP_KEYS = ("version", "gpus", "services", "instances", "health", "api")


def _check_root(c: f.Checker, root: yaml.Node) -> Profile:
    items = c.mapping(root, "profile", TOP_KEYS, required=("version",))
    if items is None:
        return Profile()
    if "version" in items:
        version = c.integer(items["version"], "version")
        if version is not None and version != 1:
            c.problem(items["version"], f"unsupported version {version}; this mipart reads version: 1")
    gpus = _check_gpus(c, items["gpus"]) if "gpus" in items else GpuSpec()
    instances = _check_instances(c, items["instances"]) if "instances" in items else InstancesSpec()
    health = _check_health(c, items["health"]) if "health" in items else HealthSpec()
    api = _check_api(c, items["api"]) if "api" in items else ApiSpec()
    services = check_services(c, items["services"]) if "services" in items else []
    check_ports(c, items.get("api") or items.get("instances") or root, services, instances, api, "api" in items)
    if c.problems:
        return Profile()
    built = tuple(build_service(service.values) for service in services)
    health = replace(health, generation_probes=tuple((s.name, s.generation_probe) for s in built if s.generation_probe))
    return Profile(gpus=gpus, services=built, instances=instances, health=health, api=api)


GPU_KEYS = ("compute", "memory", "select", "overrides", "client_services")


def _check_gpus(c: f.Checker, node: yaml.Node) -> GpuSpec:
    items = c.mapping(node, "gpus", GPU_KEYS)
    if items is None:
        return GpuSpec()
    compute = c.enum(items["compute"], "gpus.compute", f.COMPUTE_CHOICES) if "compute" in items else None
    memory = c.enum(items["memory"], "gpus.memory", f.MEMORY_CHOICES) if "memory" in items else None
    select = c.index_set(items["select"], "gpus.select", "physical GPU") if "select" in items else f.ALL
    select = None if select == f.ALL else select
    if compute and memory:
        c.compute_memory_pair(items["compute"], compute, memory, "gpus.compute")
    overrides = c.overrides(items["overrides"], memory, select) if "overrides" in items else ()
    clients = c.unit_names(items["client_services"], "gpus.client_services") if "client_services" in items else ()
    return GpuSpec(compute=compute, memory=memory, select=select, overrides=overrides, client_services=clients)


INSTANCE_KEYS = ("base_port", "hf_home", "user")


def _check_instances(c: f.Checker, node: yaml.Node) -> InstancesSpec:
    items = c.mapping(node, "instances", INSTANCE_KEYS)
    if items is None:
        return InstancesSpec()
    spec = InstancesSpec()
    base_port = spec.base_port
    if "base_port" in items:
        base_port = c.integer(items["base_port"], "instances.base_port", 1, 65536 - INSTANCE_PORT_SPAN) or base_port
    hf_home = c.cache_dir(items["hf_home"], "instances.hf_home") if "hf_home" in items else spec.hf_home
    user = c.user_name(items["user"], "instances.user") if "user" in items else spec.user
    return InstancesSpec(base_port=base_port, hf_home=hf_home or spec.hf_home, user=user or spec.user)


HEALTH_KEYS = (
    "interval",
    "timeout",
    "unhealthy_after",
    "startup_timeout",
    "restart_backoff",
    "restart_backoff_max",
    "max_restarts",
    "queue_depth_limit",
)


def _check_health(c: f.Checker, node: yaml.Node) -> HealthSpec:
    items = c.mapping(node, "health", HEALTH_KEYS)
    if items is None:
        return HealthSpec()
    values = {}
    for key, bounds in HEALTH_BOUNDS.items():
        if key in items:
            values[key] = c.duration(items[key], f"health.{key}", bounds)
    for key, high in (("unhealthy_after", 1_000_000), ("max_restarts", MAX_RESTARTS), ("queue_depth_limit", 1_000_000)):
        if key in items:
            values[key] = c.integer(items[key], f"health.{key}", 1, high)
    spec = HealthSpec(**{k: v for k, v in values.items() if v is not None})
    if "timeout" in items and spec.timeout > spec.interval:
        c.problem(
            items["timeout"],
            f"health.timeout ({spec.timeout:g}s) is longer than health.interval ({spec.interval:g}s); use a timeout "
            "no longer than the interval",
        )
    if "restart_backoff_max" in items and spec.restart_backoff_max < spec.restart_backoff:
        c.problem(
            items["restart_backoff_max"],
            "health.restart_backoff_max is shorter than health.restart_backoff; make it at least as long",
        )
    return spec


def _check_api(c: f.Checker, node: yaml.Node) -> ApiSpec:
    items = c.mapping(node, "api", ("listen",))
    if items is None or "listen" not in items:
        return ApiSpec()
    listen = c.api_listen(items["listen"], "api.listen")
    return ApiSpec(listen=listen) if listen else ApiSpec()
