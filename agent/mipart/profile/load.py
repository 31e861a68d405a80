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

from mipart.profile import fields as f
from mipart.profile import keys
from mipart.profile.indices import ALL
from mipart.profile.problems import Problem, ProfileError
from mipart.profile.schema import ApiSpec, GpuSpec, HealthSpec, InstancesSpec, Profile
from mipart.profile.sections import read_section
from mipart.profile.services import build_service, check_ports, check_services
from mipart.profile.source import compose, decode, read_profile_bytes


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


def _check_root(c: f.Checker, root: yaml.Node) -> Profile:
    items, _ = read_section(c, root, "", "profile")
    if items is None:
        return Profile()
    if "version" in items:
        version, (low, high) = c.integer(items["version"], "version"), keys.KEYS["version"].span
        if version is not None and not low <= version <= high:
            c.problem(items["version"], f"unsupported version {version}; this mipart reads version: {high}")
    gpus = _check_gpus(c, items["gpus"]) if "gpus" in items else GpuSpec()
    instances = _check_instances(c, items["instances"]) if "instances" in items else InstancesSpec()
    health = _check_health(c, items["health"]) if "health" in items else HealthSpec()
    api = _check_api(c, items["api"]) if "api" in items else ApiSpec()
    services = check_services(c, items["services"]) if "services" in items else []
    check_ports(c, services, api)
    if c.problems:
        return Profile()
    built = tuple(build_service(service.values) for service in services)
    health = replace(health, generation_probes=tuple((s.name, s.generation_probe) for s in built if s.generation_probe))
    return Profile(gpus=gpus, services=built, instances=instances, health=health, api=api)


def _check_gpus(c: f.Checker, node: yaml.Node) -> GpuSpec:
    items, values = read_section(c, node, "gpus", "gpus")
    if items is None:
        return GpuSpec()
    compute, memory = values.get("compute"), values.get("memory")
    select = values.get("select", ALL)
    select = None if select == ALL else select
    if compute and memory:
        c.compute_memory_pair(items["compute"], compute, memory, "gpus.compute")
    overrides = c.overrides(items["overrides"], memory, select) if "overrides" in items else ()
    clients = values.get("client_services", ())
    return GpuSpec(compute=compute, memory=memory, select=select, overrides=overrides, client_services=clients)


def _check_instances(c: f.Checker, node: yaml.Node) -> InstancesSpec:
    _, values = read_section(c, node, "instances", "instances")
    spec = InstancesSpec()
    return InstancesSpec(
        base_port=values.get("base_port") or spec.base_port,
        hf_home=values.get("hf_home") or spec.hf_home,
        user=values.get("user") or spec.user,
    )


def _check_health(c: f.Checker, node: yaml.Node) -> HealthSpec:
    items, values = read_section(c, node, "health", "health")
    if items is None:
        return HealthSpec()
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
    _, values = read_section(c, node, "api", "api")
    listen = values.get("listen")
    return ApiSpec(listen=listen) if listen else ApiSpec()
