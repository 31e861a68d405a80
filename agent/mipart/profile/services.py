"""The `services:` section: each service's values, then the rules across services (their
partitions and their ports), which run even on partly bad services so one run shows all."""

from __future__ import annotations

from dataclasses import dataclass

import yaml

from mipart import envfile
from mipart.names import CONTAINER_RUNTIMES
from mipart.profile import fields as f
from mipart.profile import keys
from mipart.profile.addresses import api_port
from mipart.profile.indices import ALL, format_indices
from mipart.profile.nodes import CONTROL, cut, shown
from mipart.profile.schema import (
    DEFAULT_NATIVE_COMMAND,
    ApiSpec,
    GenerationProbe,
    Routing,
    ServiceSpec,
)
from mipart.profile.sections import read_section


@dataclass
class Checked:
    """One service as checked: its good values, its value nodes by key, and its name's node."""

    values: dict
    items: dict
    node: yaml.Node

    @property
    def name(self) -> str:
        return self.values["name"]

    def node_of(self, key: str) -> yaml.Node:
        return self.items.get(key) or self.node


def check_services(c: f.Checker, node: yaml.Node) -> list[Checked]:
    entries = c.mapping(node, "services", None)
    if entries is None:
        return []
    services = []
    nginx_names: dict[str, str] = {}
    for name, value in entries.items():
        key_node = c.key_nodes[id(value)]
        if not f.SERVICE_NAME.fullmatch(name):
            c.problem(
                key_node,
                f"service name {shown(name)} is not allowed; use lower-case letters, digits, '-' or '_', starting "
                "with a letter (at most 32)",
            )
        elif (other := nginx_names.setdefault(name.replace("-", "_"), name)) != name:
            # nginx.conf names the upstream (and its variables) mipart_<name> with '-' as '_'
            c.problem(
                key_node,
                f"service name {shown(name)} and service {shown(other)} differ only in '-' against '_', which "
                "nginx.conf names alike; rename one",
            )
        checked = _check_service(c, name, value, key_node)
        if checked:
            services.append(checked)
    _check_partitions_disjoint(c, services)
    return services


def _check_service(c: f.Checker, name: str, node: yaml.Node, key_node: yaml.Node) -> Checked | None:
    where = f"services.{name}"
    items, checked_values = read_section(c, node, "services.*", where)
    if items is None:
        return None
    values: dict = {"name": name, **checked_values}
    if "health" in items:
        values["generation_probe"] = _check_service_health(c, items["health"], f"{where}.health")
    if "routing" in items:
        values["routing"] = _check_routing(c, items["routing"], f"{where}.routing")
    checked = Checked(values, items, key_node)
    runtime = values.get("runtime") or ServiceSpec.runtime
    _check_runtime_fields(c, runtime, items, where)
    partitions, tp = values.get("partitions"), values.get("tensor_parallel")
    if partitions and partitions != ALL and tp and len(partitions) % tp:
        c.problem(
            items["tensor_parallel"],
            f"{where}.tensor_parallel {tp} does not divide the {len(partitions)} partitions listed; use a divisor of "
            f"{len(partitions)} or list a multiple of {tp} partitions",
        )
    _check_exec_size(c, checked, where)
    return checked


def _check_service_health(c: f.Checker, node: yaml.Node, where: str) -> GenerationProbe | None:
    """services.NAME.health: {generation_probe: {idle: 30s, timeout: 10s}}."""
    items, _ = read_section(c, node, "services.*.health", where)
    if not items or "generation_probe" not in items:
        return None
    where = f"{where}.generation_probe"
    probe, values = read_section(c, items["generation_probe"], "services.*.health.generation_probe", where)
    if probe is None:
        return None
    default = GenerationProbe()
    return GenerationProbe(idle=values.get("idle") or default.idle, timeout=values.get("timeout") or default.timeout)


ROUTING_FORMS = "least_conn, random, or {affinity: {header: X-Session-Id}}"


def _check_routing(c: f.Checker, node: yaml.Node, where: str) -> Routing | None:
    """services.NAME.routing: least_conn | random | {affinity: {header: NAME}}."""
    if isinstance(node, yaml.MappingNode):
        items, _ = read_section(c, node, "services.*.routing", where)
        if not items or "affinity" not in items:
            return None
        where, node = f"{where}.affinity", items["affinity"]
        if not isinstance(node, yaml.MappingNode):
            c.problem(node, f"{where} must be {{header: NAME}}, e.g. routing: {{affinity: {{header: X-Session-Id}}}}")
            return None
        _, affinity = read_section(c, node, "services.*.routing.affinity", where)
        header = affinity.get("header")
        return Routing("affinity", header) if header else None
    word = c.text(node, where, ROUTING_FORMS)
    if word is None:
        return None
    policies = keys.KEYS["services.*.routing"].choices
    if word in policies:
        return Routing(word)
    same = [w for w in policies if w == word.lower()]
    if same:
        hint = f"did you mean '{same[0]}'?"
    elif word.lower() == "affinity":
        hint = "affinity needs the header to hash on: write routing: {affinity: {header: X-Session-Id}}"
    else:
        hint = f"use {ROUTING_FORMS}"
    c.problem(node, f"{where} is {shown(word)}; {hint}")
    return None


def _check_exec_size(c: f.Checker, checked: Checked, where: str) -> None:
    """argv and environment of one instance together, as execve(2) will copy them."""
    values = checked.values
    parts = (values.get("command") or DEFAULT_NATIVE_COMMAND) + (values.get("args") or ())
    size = f.exec_bytes(parts + (values.get("model") or "",), values.get("env") or ())
    if size > f.MAX_EXEC_BYTES:
        c.problem(
            checked.node,
            f"{where}: its command line and environment come to {size} bytes; keep them under {f.MAX_EXEC_BYTES} (the "
            "kernel's ARG_MAX is 2 MiB)",
        )


def build_service(values: dict) -> ServiceSpec:
    values = dict(values)
    if values.get("partitions") == ALL:
        values["partitions"] = None
    if "max_concurrency" not in values:
        values["max_concurrency"] = f.max_num_seqs(values.get("args", ())) or ServiceSpec.max_concurrency
    return ServiceSpec(**values)


def _check_runtime_fields(c: f.Checker, runtime: str, items: dict, where: str) -> None:
    container = runtime in CONTAINER_RUNTIMES
    if container and "image" not in items:
        c.problem(
            items["runtime"],
            f"{where}: runtime {runtime} needs an image; add 'image: rocm/vllm:latest' or use runtime: native",
        )
    if not container and "image" in items:
        c.problem(
            items["image"],
            f"{where}.image is only used with runtime docker or podman; remove it or set runtime: docker",
        )
    if container and isinstance(items.get("env"), yaml.MappingNode):
        _check_env_file_values(c, runtime, items["env"], where)


def _check_env_file_values(c: f.Checker, runtime: str, node: yaml.MappingNode, where: str) -> None:
    """A container's env reaches it through an env file (never the client's environment)."""
    for key_node, value_node in node.value:
        problem = (
            envfile.value_problem(value_node.value)
            if isinstance(value_node, yaml.ScalarNode) and value_node.value and not CONTROL.search(value_node.value)
            else ""
        )
        if problem:
            c.problem(
                value_node,
                f"{where}.env.{cut(key_node.value)} {problem} (runtime {runtime} gets env through an env file)",
            )


def _check_partitions_disjoint(c: f.Checker, services: list[Checked]) -> None:
    """Each logical GPU serves one service: a service left with none would answer 503 forever."""
    claimed: dict[int, str] = {}
    whole: str | None = None
    for service in services:
        name, partitions = service.name, service.values.get("partitions", ALL)
        if partitions is None:
            continue  # invalid, already reported
        node = service.node_of("partitions")
        if partitions == ALL:
            if whole or claimed:
                other = whole or next(iter(claimed.values()))
                c.problem(
                    node,
                    f"services.{name}.partitions is all but service {other} also needs partitions; give each service "
                    'its own list, e.g. partitions: "0-7"',
                )
            whole = name
            continue
        if whole:
            c.problem(
                node,
                f"services.{name}.partitions overlaps service {whole}, which takes all partitions; give each service "
                "its own list",
            )
            continue
        clash = sorted(i for i in partitions if i in claimed)
        if clash:
            c.problem(
                node,
                f"services.{name}.partitions {format_indices(clash)} already used by service {claimed[clash[0]]}; "
                "services' partitions must not overlap",
            )
        for index in partitions:
            claimed.setdefault(index, name)


def check_ports(c: f.Checker, services: list[Checked], api: ApiSpec) -> None:
    """Each listener (a port or a socket), the API's among them, is used once."""
    seen: dict[int | str, str] = {}
    port = api_port(api.listen)
    seen[port if port is not None else api.listen[5:]] = "api.listen"
    for service in services:
        listen = service.values.get("listen")
        if not listen:
            continue
        where, node = f"services.{service.name}.listen", service.items["listen"]
        if listen.path is not None:
            if listen.path in seen:
                c.problem(
                    node,
                    f"{where} socket {listen.path} is already used by {seen[listen.path]}; give each listener its own "
                    "socket",
                )
            seen.setdefault(listen.path, where)
            continue
        if listen.port in seen:
            c.problem(
                node,
                f"{where} port {listen.port} is already used by {seen[listen.port]}; give each listener its own port",
            )
        seen.setdefault(listen.port, where)
