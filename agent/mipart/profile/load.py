"""Read and validate a profile, reporting every problem as `PATH:LINE:COL: what; what is right`.

Validation works on YAML nodes (not plain data) so each problem points at its line,
and it keeps going after a problem so that one run shows all of them.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import replace

import yaml

from mipart.profile import fields as f
from mipart.profile.problems import Problem, ProfileError
from mipart.profile.schema import (
    INSTANCE_PORT_SPAN,
    ApiSpec,
    GpuSpec,
    HealthSpec,
    InstancesSpec,
    Profile,
    ServiceSpec,
)

try:  # libyaml is ~10x faster; fall back quietly where it is missing.
    _Loader = yaml.CSafeLoader
except AttributeError:  # pragma: no cover - depends on the build of PyYAML
    _Loader = yaml.SafeLoader


def read_profile_text(path: str) -> str:
    """Read the file, turning every OS-level failure into one clear line."""
    try:
        with open(path, "rb") as handle:
            raw = handle.read()
    except FileNotFoundError:
        raise ProfileError(path, [Problem(0, 0, "no such file; write a profile there or pass --profile PATH")])
    except IsADirectoryError:
        raise ProfileError(path, [Problem(0, 0, "is a directory; pass the profile file itself, e.g. /etc/mipart/profile.yaml")])
    except PermissionError:
        raise ProfileError(path, [Problem(0, 0, "cannot read: permission denied; run as root or make the file readable")])
    except OSError as exc:
        raise ProfileError(path, [Problem(0, 0, f"cannot read: {exc.strerror or exc}; pass a readable regular file")])
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise ProfileError(path, [Problem(line, 1, "not valid UTF-8; save the profile as UTF-8 text")])


def load_profile(path: str) -> Profile:
    """Load and validate; raises ProfileError listing every problem."""
    text = read_profile_text(path)
    return check_profile(text, path)


def check_profile(text: str, path: str = "<profile>") -> Profile:
    problems: list[Problem] = []
    root = _compose(text, path)
    checker = f.Checker(problems)
    profile = _check_root(checker, root)
    if problems:
        raise ProfileError(path, problems)
    digest = hashlib.sha256(text.encode()).hexdigest()
    return replace(profile, source=os.path.abspath(path) if path != "<profile>" else path, digest=digest)


def _compose(text: str, path: str) -> yaml.Node:
    try:
        nodes = list(yaml.compose_all(text, Loader=_Loader))
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line, column = (mark.line + 1, mark.column + 1) if mark else (1, 1)
        what = exc.problem or exc.context or "invalid YAML"
        raise ProfileError(path, [Problem(line, column, f"invalid YAML: {what}; fix the syntax at this point")])
    except yaml.YAMLError as exc:
        raise ProfileError(path, [Problem(1, 1, f"invalid YAML: {exc}; fix the syntax")])
    nodes = [n for n in nodes if n is not None]
    if not nodes:
        raise ProfileError(path, [Problem(1, 1, "profile is empty; start it with 'version: 1'")])
    if len(nodes) > 1:
        second = nodes[1].start_mark
        raise ProfileError(path, [Problem(second.line + 1, 1, "more than one YAML document; keep a single document (remove '---')")])
    return nodes[0]


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
    services = _check_services(c, items["services"]) if "services" in items else ()
    _check_ports(c, items, services, instances, api)
    if c.problems:
        return Profile()
    built = tuple(_build_service(values) for values, _ in services)
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
    hf_home = c.abs_path(items["hf_home"], "instances.hf_home") if "hf_home" in items else spec.hf_home
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
    for key in ("interval", "timeout", "startup_timeout", "restart_backoff", "restart_backoff_max"):
        if key in items:
            values[key] = c.duration(items[key], f"health.{key}")
    for key, low in (("unhealthy_after", 1), ("max_restarts", 1), ("queue_depth_limit", 1)):
        if key in items:
            values[key] = c.integer(items[key], f"health.{key}", low, 1_000_000)
    spec = HealthSpec(**{k: v for k, v in values.items() if v is not None})
    if "timeout" in items and spec.timeout > spec.interval:
        c.problem(items["timeout"], f"health.timeout ({spec.timeout:g}s) is longer than health.interval ({spec.interval:g}s); use a timeout no longer than the interval")
    if "restart_backoff_max" in items and spec.restart_backoff_max < spec.restart_backoff:
        c.problem(items["restart_backoff_max"], "health.restart_backoff_max is shorter than health.restart_backoff; make it at least as long")
    return spec


def _check_api(c: f.Checker, node: yaml.Node) -> ApiSpec:
    items = c.mapping(node, "api", ("listen",))
    if items is None or "listen" not in items:
        return ApiSpec()
    listen = c.api_listen(items["listen"], "api.listen")
    return ApiSpec(listen=listen) if listen else ApiSpec()


SERVICE_KEYS = (
    "model",
    "served_model_name",
    "partitions",
    "tensor_parallel",
    "listen",
    "runtime",
    "image",
    "command",
    "args",
    "env",
    "visible_devices_env",
    "max_concurrency",
    "request_timeout",
)


def _check_services(c: f.Checker, node: yaml.Node) -> list[tuple[dict, dict]]:
    """(values, key nodes) per service: cross-service checks run even on partly bad ones."""
    entries = c.mapping(node, "services", None)
    if entries is None:
        return []
    services = []
    for name, value in entries.items():
        if not f.SERVICE_NAME.fullmatch(name):
            c.problem(c.key_nodes[id(value)], f"service name {name!r} is not allowed; use lower-case letters, digits, '-' or '_', starting with a letter (at most 32)")
        checked = _check_service(c, name, value)
        if checked:
            services.append(checked)
    _check_partitions_disjoint(c, services)
    return services


def _check_service(c: f.Checker, name: str, node: yaml.Node) -> tuple[dict, dict] | None:
    where = f"services.{name}"
    items = c.mapping(node, where, SERVICE_KEYS, required=("model", "listen"))
    if items is None:
        return None
    checks = {
        "model": lambda n, w: c.model(n, w),
        "served_model_name": lambda n, w: c.safe_token(n, w),
        "partitions": lambda n, w: c.index_set(n, w, "logical GPU"),
        "tensor_parallel": lambda n, w: c.integer(n, w, 1, 64),
        "listen": lambda n, w: c.listen(n, w),
        "runtime": lambda n, w: c.enum(n, w, f.RUNTIME_CHOICES),
        "image": lambda n, w: c.image(n, w),
        "command": lambda n, w: c.argv(n, w, non_empty=True),
        "args": lambda n, w: c.argv(n, w),
        "visible_devices_env": lambda n, w: c.enum(n, w, f.VISIBLE_CHOICES),
        "max_concurrency": lambda n, w: c.integer(n, w, 1, 65536),
        "request_timeout": lambda n, w: c.duration(n, w),
    }
    values: dict = {"name": name}
    for key, check in checks.items():
        if key in items:
            values[key] = check(items[key], f"{where}.{key}")
    if "env" in items:
        values["env"] = c.env(items["env"], f"{where}.env")
    runtime = values.get("runtime") or ServiceSpec.runtime
    _check_runtime_fields(c, runtime, items, where)
    partitions, tp = values.get("partitions"), values.get("tensor_parallel")
    if partitions and partitions != f.ALL and tp and len(partitions) % tp:
        c.problem(items["tensor_parallel"], f"{where}.tensor_parallel {tp} does not divide the {len(partitions)} partitions listed; use a divisor of {len(partitions)} or list a multiple of {tp} partitions")
    return values, items


def _build_service(values: dict) -> ServiceSpec:
    values = dict(values)
    if values.get("partitions") == f.ALL:
        values["partitions"] = None
    if "max_concurrency" not in values:
        values["max_concurrency"] = f.max_num_seqs(values.get("args", ())) or ServiceSpec.max_concurrency
    return ServiceSpec(**values)


def _check_runtime_fields(c: f.Checker, runtime: str, items: dict, where: str) -> None:
    container = runtime in ("docker", "podman")
    if container and "image" not in items:
        c.problem(items["runtime"], f"{where}: runtime {runtime} needs an image; add 'image: rocm/vllm:latest' or use runtime: native")
    if not container and "image" in items:
        c.problem(items["image"], f"{where}.image is only used with runtime docker or podman; remove it or set runtime: docker")


def _check_partitions_disjoint(c: f.Checker, services: list[tuple[dict, dict]]) -> None:
    claimed: dict[int, str] = {}
    whole: str | None = None
    for values, items in services:
        name, partitions = values["name"], values.get("partitions", f.ALL)
        if partitions is None:
            continue  # invalid, already reported
        node = items.get("partitions") or next(iter(items.values()))
        if partitions == f.ALL:
            if whole or claimed:
                other = whole or next(iter(claimed.values()))
                c.problem(node, f"services.{name}.partitions is all but service {other} also needs partitions; give each service its own list, e.g. partitions: \"0-7\"")
            whole = name
            continue
        if whole:
            c.problem(node, f"services.{name}.partitions overlaps service {whole}, which takes all partitions; give each service its own list")
            continue
        clash = sorted(i for i in partitions if i in claimed)
        if clash:
            c.problem(node, f"services.{name}.partitions {f.format_indices(clash)} already used by service {claimed[clash[0]]}; services' partitions must not overlap")
        for index in partitions:
            claimed.setdefault(index, name)


def _check_ports(c: f.Checker, items: dict, services, instances: InstancesSpec, api: ApiSpec) -> None:
    low, high = instances.base_port, instances.base_port + INSTANCE_PORT_SPAN - 1
    seen: dict[int, str] = {}
    api_port = f.api_port(api.listen)
    if api_port is not None:
        seen[api_port] = "api.listen"
    for values, service_items in services:
        if not values.get("listen"):
            continue
        name, port, node = values["name"], values["listen"].port, service_items["listen"]
        if port in seen:
            c.problem(node, f"services.{name}.listen port {port} is already used by {seen[port]}; give each listener its own port")
        elif low <= port <= high:
            c.problem(node, f"services.{name}.listen port {port} is inside the instance port range {low}-{high} (instances.base_port + logical GPU); choose a port outside it")
        seen.setdefault(port, f"services.{name}.listen")
    if api_port is not None and low <= api_port <= high:
        c.problem(items["api"], f"api.listen port {api_port} is inside the instance port range {low}-{high}; choose a port outside it")
