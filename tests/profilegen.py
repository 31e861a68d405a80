"""Profiles generated from the v1 schema for property-based tests (hypothesis), and the
property every one must hold (serve_or_refuse).

Every key of the schema (profile/keys.py, which the loader reads too, so a new key is
generated too) gets either a good value drawn from its row (an integer or duration within its
bounds, one of its choices, a pool of its kind's values), or a hostile one from a pool that
covers every way a YAML scalar can mislead (empty, null, coerced numbers and booleans, dates,
tags, non-ASCII digits, control characters, huge numbers, aliases, nesting), in a scalar, list
or mapping position. The text is written by hand, so quoting is what the test chose, and some texts
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
from mipart.gpu import modes, open_backend
from mipart.names import CONTAINER_RUNTIMES
from mipart.nginx.conf import render_nginx
from mipart.nginx.front import render_front
from mipart.profile.durations import format_ms, parse_ms
from mipart.profile.indices import format_indices
from mipart.profile.keys import CHILDREN, KEYS, MAX_LOGICAL, Key, children
from mipart.profile.load import check_profile
from mipart.profile.problems import ProfileError
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


# -- good values: each drawn from its key's row in the schema (profile/keys.py) -----------------


def duration(low_ms: int, high_ms: int):
    """A duration within bounds, written as whole ms, in its largest unit, or as fractional seconds."""
    millis = st.one_of(st.integers(low_ms, min(high_ms, max(low_ms, 5000))), st.integers(low_ms, high_ms))
    forms = [lambda ms: f"{ms}ms", format_ms, lambda ms: f"{ms // 1000}.{ms % 1000:03d}s"]
    return st.builds(lambda ms, form: form(ms), millis, st.sampled_from(forms))


@st.composite
def index_set(draw, high: int, present: int):
    """(text, indices or None for all): within [0, high], mostly within what the host has (`present`),
    so that most profiles can be served, and one in ten anywhere within the bounds."""
    within = min(present, high + 1)
    pick = draw(st.integers(0, 9))
    if pick < 3:
        chosen = None
    elif pick < 6:
        chosen = frozenset(range(within))
    else:
        chosen = draw(st.sets(st.integers(0, within - 1 if pick < 9 else high), min_size=1, max_size=4))
    if chosen is None:
        return "all", None
    form = draw(st.sampled_from([lambda s: "[" + ", ".join(map(str, sorted(s))) + "]", lambda s: q(format_indices(s))]))
    return form(chosen), chosen


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
).map(lambda items: "[" + ", ".join(items) + "]")
commands = st.sampled_from(
    [
        '["vllm", "serve"]',
        "[python3, -m, vllm.entrypoints.openai.api_server]",
        '["{model}"]',
        "[vllm, serve, '{model}']",
    ]
)
# Header names nginx reads as $http_*: letters, digits and '-' (the hostile pool has the rest).
headers = st.one_of(
    st.sampled_from(["X-Session-Id", "x-conversation", q("Session-2"), "X-1", q("123"), "A" * 64]),
    st.text("abcdefghijklmnopqrstuvwxyzABCXYZ0123456789-", min_size=1, max_size=20).filter(
        lambda h: h[0].isalnum() and yaml.safe_load(h) == h
    ),
)


def _flow(pairs: dict) -> str:
    return "{" + ", ".join(f"{k}: {v}" for k, v in pairs.items()) + "}"


# Good values of the kinds that have no bounds to draw within, written as a user would.
POOLS = {
    "model": st.sampled_from(["org/model", "meta-llama/Llama-3.1-8B-Instruct", "/models/llama", q("org/m.v2")]),
    "name": st.one_of(words, st.sampled_from([q("3.10"), "chat-1", "3.1"])),
    "image": st.sampled_from(["rocm/vllm:latest", "registry.example:5000/rocm/vllm:v1", q("rocm/vllm")]),
    "env": st.dictionaries(st.sampled_from(["A", "B_2", "VLLM", "_u"]), env_values, max_size=3).map(_flow),
    "paths": st.sampled_from(
        ["[]", "[/etc/mipart/secrets/chat.env]", f"[{q('/etc/mipart/a.env')}, /etc/mipart/b.env]"]
    ),
    "unit names": st.sampled_from(["[]", "[my-inference.service]", "[other, 'a@b.service']"]),
    "directory": st.sampled_from(["/var/lib/mipart/hf", q("/data/hf-cache")]),
    "user": st.sampled_from(["mipart", "root", "_svc"]),
    "header": headers,
}
# Rules between two keys that validation holds besides each key's bounds (profile/load.py).
NO_LONGER_THAN = {"health.timeout": "health.interval"}
NO_SHORTER_THAN = {"health.restart_backoff_max": "health.restart_backoff"}


def good(row: Key, rate: float):
    """A value the schema's row says is good, as YAML text; kinds that need context are given instead."""
    if row.kind in ("integer", "version"):
        return st.integers(*row.span).map(str)
    if row.kind == "duration":
        return duration(*row.span)
    if row.kind in ("choice", "routing"):
        word = st.sampled_from(row.choices).flatmap(lambda w: st.sampled_from([w, q(w)]))
        return word if row.kind == "choice" else st.one_of(word, fields(row.path, rate).map(_flow))
    if row.kind == "argv":
        return commands if row.low else args
    if row.kind == "mapping":
        return fields(row.path, rate).map(_flow)
    if row.kind == "physical GPUs":
        return index_set(row.span[1], present=8).map(lambda drawn: drawn[0])
    return POOLS[row.kind]


@st.composite
def fields(draw, path: str, rate: float, given: dict | None = None, names: set | None = None) -> dict:
    """Keys under `path` as the schema lists them (`names`, or some plus the required ones), each
    with a good value (its row's, or `given`) or a hostile one. A duration that another key is held
    to is drawn first (the table lists it first), or is its default when left out."""
    rows, given = CHILDREN[path], given or {}
    if names is None:
        names = {r.name for r in rows if r.required} | draw(st.sets(st.sampled_from([r.name for r in rows])))
    held: dict[str, int] = {}  # durations as they hold: drawn or the default
    out = {}
    for row in rows:
        if row.kind == "duration":
            low, high = row.span
            high = min(high, held.get(NO_LONGER_THAN.get(row.path, ""), high))
            low = max(low, held.get(NO_SHORTER_THAN.get(row.path, ""), low))
            text = draw(duration(low, high)) if row.name in names else row.default
            held[row.path] = parse_ms(text or "")[0]
            value = st.just(text)
        else:
            value = given[row.name] if row.name in given else good(row, rate)
        if row.name in names:
            out[row.name] = draw(maybe_hostile(value, rate))
    return out


def chance(rate: float):
    """True about `rate` of the time: hypothesis's floats(0, 1) favour 0.0 and tiny values, which
    made `floats(0, 1) < 0.02` true one time in four."""
    return st.sampled_from(range(1000)).map(lambda n: n < rate * 1000)


@st.composite
def maybe_hostile(draw, good, hostile_rate: float):
    if draw(chance(hostile_rate)):
        return draw(HOSTILE)
    return draw(good)


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


def divisors(count: int, row: Key) -> list[int]:
    low, high = row.span
    return [n for n in range(low, min(count, high) + 1) if count % n == 0]


@st.composite
def service(draw, index: int, partitions: tuple[str, int], rate: float, **where):
    """One service, block style: its partitions and listener given (they must not clash with the
    others'), the rest from the schema; an image exactly when the runtime is a container's."""
    text, count = partitions
    row = KEYS["services.*.runtime"]
    runtime = draw(st.sampled_from([*row.choices, None]))
    given = {
        "partitions": st.just(text),
        "tensor_parallel": st.sampled_from(divisors(count, KEYS["services.*.tensor_parallel"])).map(str),
        "listen": listen(index, **where),
        "runtime": st.just(runtime or row.default),
    }
    keys = children("services.*")
    names = {"model", "listen", "partitions"} | set(draw(st.sets(st.sampled_from(keys), max_size=6)))
    if draw(st.booleans()):  # half the services set their routing, so every policy reaches nginx -t
        names.add("routing")
    if runtime in CONTAINER_RUNTIMES:
        names |= {"runtime", "image"}
    else:
        names.discard("image")
    chosen = draw(fields("services.*", rate, given, names))
    return f"  s{index}:\n" + "".join(f"    {k}: {v}\n" for k, v in chosen.items())


@st.composite
def gpus(draw, rate: float, present: int):
    """gpus: a compute mode and a memory mode some kernel pairs, overrides within `select`.
    Returns the text and how many logical GPUs the host will show (at most what mipart serves)."""
    compute = draw(st.sampled_from(KEYS["gpus.compute"].choices))
    memory = draw(st.sampled_from([m for m in KEYS["gpus.memory"].choices if modes.compatible(compute, m)]))
    select, members = draw(index_set(KEYS["gpus.select"].span[1], present))
    override = KEYS["gpus.overrides[].compute"].choices
    one = fields(
        "gpus.overrides[]",
        rate,
        {
            "select": st.sampled_from(sorted(members or range(present))).map(lambda g: f"[{g}]"),
            "compute": st.sampled_from([c for c in override if modes.compatible(c, memory)]),
        },
    )
    given = {
        "compute": st.just(compute),
        "memory": st.just(memory),
        "select": st.just(select),
        "overrides": st.one_of(st.just("[]"), one.map(lambda item: f"[{_flow(item)}]")),
    }
    chosen = draw(fields("gpus", rate, given))
    if "compute" not in chosen:  # the host keeps its mode, or takes the driver's for a new memory mode
        reloads = chosen.get("memory", SIM_MEMORY) != SIM_MEMORY
        compute = modes.AUTO_COMPUTE_FOR_MEMORY[memory] if reloads else SIM_COMPUTE
    logical = min(present * modes.partitions_per_gpu(compute), MAX_LOGICAL + 1)
    return (_flow(chosen) if chosen else ""), logical


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
    gpu_text, logical = draw(gpus(rate, present=8))
    count = draw(st.integers(0, 3))
    # Disjoint partitions within what the host will have, or all for a single service.
    cut = sorted(draw(st.sets(st.integers(1, logical - 1), min_size=count, max_size=count))) if count > 1 else []
    bounds = list(zip([0] + cut, cut + [logical], strict=True))
    forms = [lambda lo, hi: q(f"{lo}-{hi - 1}"), lambda lo, hi: "[" + ", ".join(map(str, range(lo, hi))) + "]"]
    parts = (
        [("all", logical)]
        if count == 1 and draw(st.booleans())
        else [(draw(st.sampled_from(forms))(lo, hi), hi - lo) for lo, hi in bounds]
    )
    low, high = KEYS["instances.base_port"].span
    base = st.integers(low, high)  # unused since instances listen on sockets, but still a key
    api = st.sampled_from([q(f"127.0.0.1:{port_base + 499}"), q("unix:/run/mipart/api.sock")])
    lines = ["version: " + draw(maybe_hostile(good(KEYS["version"], rate), rate / 4))]
    for name, text in (
        ("gpus", gpu_text),
        ("instances", _flow(draw(fields("instances", rate, {"base_port": base.map(str)})))),
        ("health", _flow(draw(fields("health", rate)))),
    ):
        if text not in ("", "{}"):
            lines.append(f"{name}: {text}")
    if draw(st.booleans()):
        lines.append("api: " + _flow(draw(fields("api", rate, {"listen": api}, names={"listen"}))))
    if count:
        lines.append("services:")
        lines += [draw(service(i, parts[i], rate, **where)).rstrip("\n") for i in range(count)]
    text = "\n".join(lines) + "\n"
    if draw(chance(rate)):  # mutate: a few characters replaced by YAML's own punctuation
        chars = list(text)
        for _ in range(draw(st.integers(1, 4))):
            chars[draw(st.integers(0, len(chars) - 1))] = draw(st.sampled_from(list(":{}[]-\n #'\"!&*|>%@`\t,?")))
        text = "".join(chars)
    return text


# -- the property ------------------------------------------------------------------------------


SIM_COMPUTE, SIM_MEMORY = "CPX", "NPS2"  # the simulated host's modes before any profile


def sim_backend(work: Path):
    """A simulated 8 x MI300X host, the largest layout (CPX: 64 logical GPUs) reachable from it."""
    return open_backend(
        create_sim(work, model="mi300x", gpus=8, compute=SIM_COMPUTE, memory=SIM_MEMORY, rules="rocm-mi300x").root
    )


def assert_located(exc: ProfileError, path: str = PATH) -> None:
    lines = str(exc).splitlines()
    assert lines, "a rejection with no problem line"
    pattern = LOCATED if path == PATH else re.compile(re.escape(path) + r"(:[1-9][0-9]*:[1-9][0-9]*)?: \S[^\n]*")
    for line in lines:
        assert pattern.fullmatch(line), line


def serve_or_refuse(text: str, backend, prefix: Path = Path("/run/mipart/nginx")) -> tuple[str, str] | None:
    """The rendered back and front nginx.conf of an accepted profile (the front's prefix beside the back's,
    as on a host); None when it was rejected (with located lines)."""
    try:
        profile = check_profile(text, PATH)
    except ProfileError as exc:
        assert_located(exc)
        event("rejected")
        return None
    try:
        planned = plan_serving(profile, backend, prefix.parent / "sockets")
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
    front = render_front(profile, specs, prefix, prefix.parent / "nginx-front")
    for service in profile.services:
        assert f"listen {service.listen};" in front and f"listen {service.listen};" not in conf
        assert f"listen unix:{prefix}/svc-{service.name}.sock;" in conf
        assert f"routing {service.routing}\n" in conf and _BALANCERS[service.routing.policy] in conf
        event(f"routing {service.routing.policy}")
        assert " 0s;" not in conf + front and "None" not in conf + front
    _execs(specs)
    event("accepted and served")
    return conf, front


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
