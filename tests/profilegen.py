"""Profiles generated from the v1 schema for property-based tests (hypothesis), and the
property every one must hold (serve_or_refuse).

Every key the loader knows (its own key tuples, so a new key is generated too) gets either
a value of its kind that should pass, or a hostile one from a pool that covers every way a
YAML scalar can mislead (empty, null, coerced numbers and booleans, dates, tags, non-ASCII
digits, control characters, huge numbers, aliases, nesting), in a scalar, list or mapping
position. The text is written by hand, so quoting is what the test chose, and some texts
are then mutated character by character.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path

import yaml
from conftest import create_sim
from hypothesis import HealthCheck, event
from hypothesis import strategies as st

from mipart.errors import UserError
from mipart.gpu import open_backend
from mipart.nginx.conf import render_nginx
from mipart.profile.load import GPU_KEYS, HEALTH_KEYS, INSTANCE_KEYS, check_profile
from mipart.profile.problems import ProfileError
from mipart.profile.services import SERVICE_KEYS
from mipart.serving.planned import plan_serving

PATH = "/etc/mipart/profile.yaml"
LOCATED = re.compile(re.escape(PATH) + r":[1-9][0-9]*:[1-9][0-9]*: \S[^\n]*")
# A fixed seed and no deadline (CI machines vary); example counts are set per test.
SETTINGS = dict(
    derandomize=True, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large]
)

# -- hostile scalars and shapes: any position may get one -------------------------------------
HOSTILE_SCALARS = [
    "",
    "~",
    "null",
    "''",
    '""',
    "yes",
    "no",
    "on",
    "off",
    "Y",
    "3.10",
    "010",
    "0o17",
    "0x1F",
    "0b101",
    "1:30",
    "1_000",
    "+5",
    "-0",
    ".inf",
    "-.inf",
    ".nan",
    "1e5",
    "1.0e+3",
    "2001-12-14",
    "2001-13-45",
    "!!int abc",
    "!!float x",
    "!!binary aGk=",
    "!foo bar",
    "!!str 5",
    "!!int '7'",
    "!!timestamp x",
    "!!python/object:os.system x",
    "'٨٠٤٠'",
    "٨٠٤٠",
    "'²'",
    "9" * 400,
    "9" * 400 + "s",
    "'" + "x" * 7000 + "'",
    '"a\\nb"',
    '"a\\tb"',
    '"\\u2028"',
    '"a\\x85b"',
    '"\\ud800"',
    '"\\0"',
    "'a b'",
    "'a;b'",
    "'a{b}'",
    '"a\'b"',
    "'$x'",
    "-1",
    "0",
    "99999999999999999999",
    "&anchor 5",
    "*nowhere",
    "'unix:rel.sock'",
    "'::1:8040'",
    "'[zz]:8040'",
    "'1.2.3:80'",
    "'127.0.0.01:80'",
    "'host.example:8040'",
    "'[fe80::1%eth0]:8040'",
    "0.5ms",
    "0s",
    "25h",
    "1.5",
    "'0-9999'",
    "'7-0'",
    "'0,0'",
    "ALL",
    "Native",
    "spx",
    "'X_Session'",
    "'X.Id'",
    "'a$b'",
    "'x;}'",
    "'${x}'",
    "'-x'",
    "Random",
    "affinity",
    "round_robin",
]
HOSTILE_SHAPES = [
    "[]",
    "{}",
    "[null]",
    "[[]]",
    "{a: b}",
    "[" * 20 + "]" * 20,
    "{a: " * 20 + "b" + "}" * 20,
    "[~, '']",
    "&loop [*loop]",
    "!!set {a, b}",
    "!!omap [a: 1]",
]
HOSTILE = st.sampled_from(HOSTILE_SCALARS + HOSTILE_SHAPES)


def q(text: str) -> str:
    """YAML double-quoted form (JSON's escapes are a subset of YAML's)."""
    return json.dumps(text)


durations = st.one_of(
    st.builds(lambda n, u: f"{n}{u}", st.integers(1, 5000), st.sampled_from(["ms", "s"])),
    st.builds(lambda n: f"{n}m", st.integers(1, 60)),
    st.sampled_from(["1.5s", "0.25s", "500ms", "1h", "2s"]),
)
# Plain words YAML reads as the same string (not `null`, `on`, `1.0`...): the hostile pool has those.
words = st.text("abcdefghijklmnopqrstuvwxyz0123456789-_.", min_size=1, max_size=12).filter(
    lambda w: w[0].isalnum() and yaml.safe_load(w) == w
)
env_values = st.one_of(
    words.map(q),
    st.sampled_from([q("a b c"), q("x=y"), q("ünïcode"), q("3.10"), q("on"), "plain"]),
    st.sampled_from([1000, 131000, 131066]).map(lambda n: q("v" * n)),
)
args = st.lists(
    st.one_of(
        st.sampled_from(
            [
                "--max-num-seqs",
                q("512"),
                "512",
                "--seed",
                q("010"),
                "--enforce-eager",
                q("0.90"),
                "0.9",
                "--gpu-memory-utilization",
                q("--x=y z"),
            ]
        ),
        words,
    ),
    max_size=6,
)


# Header names nginx reads as $http_*: letters, digits and '-' (the hostile pool has the rest).
headers = st.one_of(
    st.sampled_from(["X-Session-Id", "x-conversation", q("Session-2"), "X-1", q("123"), "A" * 64]),
    st.text("abcdefghijklmnopqrstuvwxyzABCXYZ0123456789-", min_size=1, max_size=20).filter(
        lambda h: h[0].isalnum() and yaml.safe_load(h) == h
    ),
)


def routing(rate: float):
    affinity = maybe_hostile(headers, rate).map(lambda h: f"{{affinity: {{header: {h}}}}}")
    return st.one_of(
        st.sampled_from(["least_conn", q("least_conn")]), st.sampled_from(["random", q("random")]), affinity
    )


def listen(index: int, sock_dir: str, loopback_only: bool, port_base: int, ipv6: bool):
    """Each service its own ports and socket names, so listeners collide only when a value is hostile."""
    hosts = (
        ["127.0.0.1", "localhost"] + ["[::1]"] * ipv6 + ([] if loopback_only else ["*", "0.0.0.0"] + ["[::]"] * ipv6)
    )
    ports = st.integers(port_base + 100 * index, port_base + 99 + 100 * index)
    tcp = st.builds(lambda h, p: q(f"{h}:{p}"), st.sampled_from(hosts), ports)
    forms = [tcp, st.builds(lambda n: q(f"unix:{sock_dir}/s{index}-{n}.sock"), st.integers(0, 9))]
    if not loopback_only:
        forms.append(ports.map(str))
    return st.one_of(*forms)


def _flow(pairs: dict) -> str:
    return "{" + ", ".join(f"{k}: {v}" for k, v in pairs.items()) + "}"


@st.composite
def maybe_hostile(draw, good, hostile_rate: float):
    if draw(st.floats(0, 1)) < hostile_rate:
        return draw(HOSTILE)
    return draw(good)


@st.composite
def service(draw, index: int, partitions: str, rate: float, **where):
    runtime = draw(st.sampled_from(["native", "docker", "podman", None]))
    good = {
        "model": st.sampled_from(["org/model", "meta-llama/Llama-3.1-8B-Instruct", "/models/llama", q("org/m.v2")]),
        "served_model_name": st.one_of(words, st.sampled_from([q("3.10"), "chat-1", "3.1"])),
        "partitions": st.just(partitions),
        "tensor_parallel": st.just("1"),
        "listen": listen(index, **where),
        "runtime": st.just(runtime or "native"),
        "image": st.sampled_from(["rocm/vllm:latest", "registry.example:5000/rocm/vllm:v1", q("rocm/vllm")]),
        "command": st.sampled_from(
            [
                '["vllm", "serve"]',
                "[python3, -m, vllm.entrypoints.openai.api_server]",
                '["{model}"]',
                "[vllm, serve, '{model}']",
            ]
        ),
        "args": args.map(lambda items: "[" + ", ".join(items) + "]"),
        "env": st.dictionaries(st.sampled_from(["A", "B_2", "VLLM", "_u"]), env_values, max_size=3).map(_flow),
        "env_files": st.sampled_from(
            ["[]", "[/etc/mipart/secrets/chat.env]", f"[{q('/etc/mipart/a.env')}, /etc/mipart/b.env]"]
        ),
        "visible_devices_env": st.sampled_from(["CUDA_VISIBLE_DEVICES", "HIP_VISIBLE_DEVICES", "ROCR_VISIBLE_DEVICES"]),
        "max_concurrency": st.integers(1, 65536).map(str),
        "request_timeout": durations,
        "routing": routing(rate),
        "health": st.one_of(
            st.just("{}"),
            st.builds(lambda i, t: f"{{generation_probe: {{idle: {i}, timeout: {t}}}}}", durations, durations),
        ),
    }
    assert set(good) == set(SERVICE_KEYS), "a service key without a generator: add one"
    chosen = {"model", "listen", "partitions"} | set(draw(st.sets(st.sampled_from(SERVICE_KEYS), max_size=6)))
    if draw(st.booleans()):  # half the services set their routing, so every policy reaches nginx -t
        chosen.add("routing")
    if runtime in ("docker", "podman"):
        chosen |= {"runtime", "image"}
    else:
        chosen.discard("image")
    fields = {key: draw(maybe_hostile(good[key], rate)) for key in SERVICE_KEYS if key in chosen}
    return f"  s{index}:\n" + "".join(f"    {k}: {v}\n" for k, v in fields.items())


@st.composite
def profile_text(
    draw,
    sock_dir: str = "/tmp",
    loopback_only: bool = False,
    rate: float | None = None,
    port_base: int = 20000,
    ipv6: bool = True,
):
    """One profile's text: mostly valid when rate is small, mostly not when it is large.

    Service listeners take ports from port_base up (400 of them), api.listen port_base + 499.
    """
    rate = draw(st.sampled_from([0.0, 0.02, 0.1, 0.4])) if rate is None else rate
    where = {"sock_dir": sock_dir, "loopback_only": loopback_only, "port_base": port_base, "ipv6": ipv6}
    compute, memory = draw(
        st.sampled_from([("SPX", "NPS1"), ("DPX", "NPS2"), ("QPX", "NPS4"), ("CPX", "NPS2"), ("CPX", "NPS4")])
    )
    logical = {"SPX": 8, "DPX": 16, "QPX": 32, "CPX": 64}[compute]
    count = draw(st.integers(0, 3))
    # Disjoint partitions within what the host will have, or all for a single service.
    cut = sorted(draw(st.sets(st.integers(1, logical - 1), min_size=count, max_size=count))) if count > 1 else []
    bounds = list(zip([0] + cut, cut + [logical], strict=True))
    forms = [lambda lo, hi: q(f"{lo}-{hi - 1}"), lambda lo, hi: "[" + ", ".join(map(str, range(lo, hi))) + "]"]
    parts = (
        ["all"] if count == 1 and draw(st.booleans()) else [draw(st.sampled_from(forms))(lo, hi) for lo, hi in bounds]
    )
    gpus = {
        "compute": st.just(compute),
        "memory": st.just(memory),
        "select": st.sampled_from(["all", "[0, 1, 2, 3, 4, 5, 6, 7]", q("0-7")]),
        "overrides": st.sampled_from(["[]", f"[{{select: [7], compute: {compute}}}]"]),
        "client_services": st.sampled_from(["[]", "[my-inference.service]", "[other, 'a@b.service']"]),
    }
    base = draw(st.sampled_from([21000, 22000, 30000]))
    instances = {
        "base_port": st.just(str(base)),
        "hf_home": st.sampled_from(["/var/lib/mipart/hf", q("/data/hf-cache")]),
        "user": st.sampled_from(["mipart", "root", "_svc"]),
    }
    health = {
        "interval": st.sampled_from(["2s", "500ms", "1s"]),
        "timeout": st.sampled_from(["100ms", "300ms", "1ms"]),
        "unhealthy_after": st.integers(1, 10).map(str),
        "startup_timeout": st.sampled_from(["30m", "1s", "24h"]),
        "restart_backoff": st.sampled_from(["1ms", "200ms", "1s"]),
        "restart_backoff_max": st.sampled_from(["1h", "60s", "1d"]),
        "max_restarts": st.integers(1, 1000).map(str),
        "queue_depth_limit": st.integers(1, 1_000_000).map(str),
    }
    for table, keys in ((gpus, GPU_KEYS), (instances, INSTANCE_KEYS), (health, HEALTH_KEYS)):
        assert set(table) == set(keys), "a key without a generator: add one"
    lines = ["version: " + draw(maybe_hostile(st.just("1"), rate / 4))]
    for name, table in (("gpus", gpus), ("instances", instances), ("health", health)):
        keys = draw(st.sets(st.sampled_from(sorted(table))))
        if keys:
            lines.append(f"{name}: " + _flow({k: draw(maybe_hostile(table[k], rate)) for k in sorted(keys)}))
    if draw(st.booleans()):
        lines.append(
            "api: "
            + _flow(
                {
                    "listen": draw(
                        maybe_hostile(
                            st.sampled_from([q(f"127.0.0.1:{port_base + 499}"), q("unix:/run/mipart/api.sock")]), rate
                        )
                    )
                }
            )
        )
    if count:
        lines.append("services:")
        lines += [draw(service(i, parts[i], rate, **where)).rstrip("\n") for i in range(count)]
    text = "\n".join(lines) + "\n"
    if draw(st.floats(0, 1)) < rate:  # mutate: a few characters replaced by YAML's own punctuation
        chars = list(text)
        for _ in range(draw(st.integers(1, 4))):
            chars[draw(st.integers(0, len(chars) - 1))] = draw(st.sampled_from(list(":{}[]-\n #'\"!&*|>%@`\t,?")))
        text = "".join(chars)
    return text


# -- the property ------------------------------------------------------------------------------


def sim_backend(work: Path):
    """A simulated 8 x MI300X host, the largest layout (CPX: 64 logical GPUs) reachable from it."""
    return open_backend(
        create_sim(work, model="mi300x", gpus=8, compute="CPX", memory="NPS2", rules="rocm-mi300x").root
    )


def assert_located(exc: ProfileError, path: str = PATH) -> None:
    lines = str(exc).splitlines()
    assert lines, "a rejection with no problem line"
    pattern = LOCATED if path == PATH else re.compile(re.escape(path) + r"(:[1-9][0-9]*:[1-9][0-9]*)?: \S[^\n]*")
    for line in lines:
        assert pattern.fullmatch(line), line


def serve_or_refuse(text: str, backend, prefix: Path = Path("/run/mipart/nginx")) -> str | None:
    """The rendered nginx.conf of an accepted profile; None when it was rejected (with located lines)."""
    try:
        profile = check_profile(text, PATH)
    except ProfileError as exc:
        assert_located(exc)
        event("rejected")
        return None
    try:
        planned = plan_serving(profile, backend)
    except UserError as exc:  # this host cannot take it (its GPUs, its memory mode): one line that says so
        assert "\n" not in str(exc) and re.search(r"GPU|host", str(exc)), str(exc)
        event("accepted, not for this host")
        return None
    specs = planned.instances
    for service in profile.services:  # every service gets GPUs (none serves 503 forever)
        assert any(s.service == service.name for s in specs), service.name
    numbers = [s.number for s in specs]
    assert len(numbers) == len(set(numbers)), "two instances on one logical GPU"
    conf = render_nginx(profile, specs, frozenset(numbers), prefix)
    for service in profile.services:
        assert f"listen {service.listen};" in conf
        assert f"routing {service.routing}\n" in conf and _BALANCERS[service.routing.policy] in conf
        event(f"routing {service.routing.policy}")
        assert " 0s;" not in conf and "None" not in conf
    _execs(specs)
    event("accepted and served")
    return conf


_BALANCERS = {
    "least_conn": "        least_conn;\n",
    "random": "        random two least_conn;\n",
    "affinity": "        hash $http_",
}


def _execs(specs) -> None:
    """The kernel takes each service's first instance's argv and environment (no E2BIG, no NUL)."""
    seen = set()
    for spec in specs:
        if spec.service in seen:
            continue
        seen.add(spec.service)
        env = {**dict(spec.env), "PATH": os.environ.get("PATH", "/usr/bin:/bin")}
        done = subprocess.run(["/bin/true", *spec.argv[1:]], env=env, timeout=30)
        assert done.returncode == 0
