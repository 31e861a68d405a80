"""The profile's keys as data, one row each: path, kind, bounds, default, one line of doc: pure.

This is the one place a key is declared. Loading takes each mapping's allowed and required keys
and each value's bounds from here, docs/profile.md's key table is generated from it
(profile/keydoc.py), and the property tests draw their good values from its kinds and bounds, so
none of them can drift from the others. The dataclasses in schema.py keep their own defaults
(they are what mipart consumes); tests/unit/test_profile_keys.py proves they equal these.
"""

from __future__ import annotations

from dataclasses import dataclass

from mipart.gpu.modes import COMPUTE_MODES, MEMORY_MODES
from mipart.names import DEFAULT_API_LISTEN, VISIBLE_DEVICE_VARS
from mipart.profile import durations
from mipart.profile.schema import (
    DEFAULT_HF_HOME,
    DEFAULT_MAX_CONCURRENCY,
    DEFAULT_NATIVE_COMMAND,
    MAX_INSTANCES,
    RUNTIMES,
)

MAX_INDEX = 1023  # physical GPU indices a profile may name
MAX_LOGICAL = MAX_INSTANCES - 1

# Each kind of value and how it is written; the loader has one check per kind (profile/sections.py).
KINDS = {
    "version": "a whole number within the bounds column",
    "mapping": "`key: value` lines, or `{key: value}`",
    "integer": "plain decimal digits, e.g. `8081` (`010` and `1_000` are refused)",
    "duration": "whole milliseconds with a unit: `500ms`, `1.5s`, `2s`, `5m`, `1h`, `1d`",
    "choice": "one of the words in the bounds column, as written",
    "physical GPUs": '`all`, a list like `[0, 1]`, or ranges like `"0-3,6"`: GPUs in PCI order',
    "logical GPUs": '`all`, a list like `[0, 1]`, or ranges like `"0-7"`: mipart\'s logical GPU numbers',
    "overrides": "a list of `{select: physical GPUs, compute: choice}`",
    "unit names": "a list of systemd unit names; no suffix means `.service`",
    "model": "a Hugging Face id (`org/name`) or an absolute path",
    "name": "letters, digits and `. _ / : + @ -`, starting with a letter or digit",
    "listen": "a port, `host:port` or `unix:/abs/path`, as nginx's `listen` reads it",
    "api listen": "`host:port`, a port (on loopback) or `unix:/run/mipart/NAME.sock`",
    "image": "an image reference, e.g. `rocm/vllm:latest`",
    "argv": "a list of strings",
    "env": "a mapping of variable names to strings",
    "paths": "a list of absolute paths",
    "directory": "an absolute path: a directory of its own",
    "user": "a system user name, e.g. `mipart`",
    "routing": "`least_conn`, `random`, or `{affinity: {header: NAME}}`",
    "header": "a request header name: letters, digits and `-`, e.g. `X-Session-Id`",
}


@dataclass(frozen=True)
class Key:
    """One key. `path` is dotted; `*` is any service name, `[]` any item of a list.

    `low`/`high` bound an integer's value, a duration's milliseconds, a list's length;
    `default` is written as the profile would write it, None when unset (or required).
    """

    path: str
    kind: str
    doc: str
    default: str | None
    low: int | None = None
    high: int | None = None
    choices: tuple[str, ...] = ()
    required: bool = False

    @property
    def parent(self) -> str:
        return self.path.rpartition(".")[0]

    @property
    def name(self) -> str:
        return self.path.rpartition(".")[2]

    @property
    def span(self) -> tuple[int, int]:
        """(low, high) of a row that has both, as every duration, index set and the version has."""
        assert self.low is not None and self.high is not None, f"{self.path} has no bounds"
        return self.low, self.high

    @property
    def bounds(self) -> durations.Bounds:
        """A duration's bounds, as the duration check takes them."""
        return durations.Bounds(*self.span)


def _flow(items: tuple[str, ...]) -> str:
    return "[" + ", ".join(items) + "]"


def _limit(kind: str, text: str) -> int | None:
    if not text:
        return None
    return durations.parse_ms(text)[0] if kind == "duration" else int(text)


def _key(
    path: str, kind: str, default: str | None, bounds: str | tuple[str, ...], doc: str, required: bool = False
) -> Key:
    """A row as written below: bounds are `low..high` (a duration's in its units) or the choices."""
    if isinstance(bounds, tuple):
        return Key(path, kind, doc, default, choices=bounds, required=required)
    low, _, high = bounds.partition("..")
    return Key(path, kind, doc, default, _limit(kind, low), _limit(kind, high), required=required)


S = "services.*."
# One row a key, as a table: the formatter would spread each over several lines.
# fmt: off
ROWS: tuple[Key, ...] = (
    _key("version", "version", None, "1..1", "the schema's version", required=True),
    _key("gpus", "mapping", None, "", "the partition layout, applied at boot by mipart-partition.service"),
    _key("gpus.compute", "choice", None, COMPUTE_MODES, "logical GPUs per physical GPU; unset: left as it is"),
    _key("gpus.memory", "choice", None, MEMORY_MODES, "memory mode, hive-wide; unset: left as it is"),
    _key("gpus.select", "physical GPUs", "all", f"0..{MAX_INDEX}", "the GPUs whose compute mode is managed"),
    _key("gpus.overrides", "overrides", "[]", "", "per-GPU compute modes; a GPU in at most one"),
    _key("gpus.overrides[].select", "physical GPUs", None, f"0..{MAX_INDEX}", "the GPUs it sets", required=True),
    _key("gpus.overrides[].compute", "choice", None, COMPUTE_MODES, "their compute mode", required=True),
    _key("gpus.client_services", "unit names", "[]", "", "other units that hold GPUs: stopped to repartition"),
    _key("services", "mapping", None, "", "one nginx listener and its vLLM instances per model, by service name"),
    _key("services.*", "mapping", None, "", "one service; its name is `[a-z][a-z0-9_-]{0,31}`"),
    _key(S + "model", "model", None, "", "what the engine serves", required=True),
    _key(S + "served_model_name", "name", None, "", "the model name clients use; unset: `model`"),
    _key(S + "partitions", "logical GPUs", "all", f"0..{MAX_LOGICAL}", "its logical GPUs; disjoint from others'"),
    _key(S + "tensor_parallel", "integer", "1", "1..64", "logical GPUs per instance; divides the partitions"),
    _key(S + "listen", "listen", None, "", "where nginx listens for this service", required=True),
    _key(S + "runtime", "choice", "native", RUNTIMES, "how an instance runs"),
    _key(S + "image", "image", None, "", "the container image: required for docker and podman only"),
    _key(S + "command", "argv", _flow(DEFAULT_NATIVE_COMMAND), "1..", "the engine's argv; `{model}` is replaced"),
    _key(S + "args", "argv", "[]", "", "appended after mipart's own engine flags"),
    _key(S + "env", "env", "{}", "", "the engine's environment, over the ROCm defaults; no secrets here"),
    _key(S + "env_files", "paths", "[]", "", "root-owned 0600 `KEY=VALUE` files read at each start: secrets"),
    _key(S + "visible_devices_env", "choice", VISIBLE_DEVICE_VARS[0], VISIBLE_DEVICE_VARS,
         "the variable through which an instance gets its GPUs"),
    _key(S + "max_concurrency", "integer", str(DEFAULT_MAX_CONCURRENCY), "1..65536",
         "requests in flight per instance, sizing nginx; unset: `--max-num-seqs` in args, else the default"),
    _key(S + "request_timeout", "duration", "600s", "1ms..1d", "nginx's proxy read and send timeouts"),
    _key(S + "health", "mapping", None, "", "opt-in health checks of this service's instances"),
    _key(S + "health.generation_probe", "mapping", None, "", "a one-token completion when an instance is idle"),
    _key(S + "health.generation_probe.idle", "duration", "30s", "100ms..1d", "no token generated this long: probe"),
    _key(S + "health.generation_probe.timeout", "duration", "10s", "1ms..1h", "not done by then: out of rotation"),
    _key(S + "routing", "routing", "least_conn", ("least_conn", "random"), "how nginx picks an instance"),
    _key(S + "routing.affinity", "mapping", None, "", "a consistent hash of one request header", required=True),
    _key(S + "routing.affinity.header", "header", None, "", "the header; requests without it: round robin",
         required=True),
    _key("instances", "mapping", None, "", "how every instance runs"),
    _key("instances.base_port", "integer", "8081", "1..65472",
         "unused: instances listen on unix sockets; still accepted, so older profiles load"),
    _key("instances.hf_home", "directory", DEFAULT_HF_HOME, "", "the Hugging Face cache, mounted into containers"),
    _key("instances.user", "user", "mipart", "", "the system user native servers run as"),
    _key("health", "mapping", None, "", "how the agent probes instances and restarts them"),
    _key("health.interval", "duration", "2s", "1ms..1h", "`/health` probe period; unit states are read as often"),
    _key("health.timeout", "duration", "1s", "1ms..1h", "one probe's time; not longer than interval"),
    _key("health.unhealthy_after", "integer", "3", "1..1000000", "failed probes in a row before nginx drops it"),
    _key("health.startup_timeout", "duration", "30m", "1s..1d", "a model load is no failure until this passes"),
    _key("health.restart_backoff", "duration", "1s", "1ms..1h", "the first delay between restarts; doubles each time"),
    _key("health.restart_backoff_max", "duration", "60s", "1ms..1d", "the cap of that delay"),
    # The backoff doubles per restart: 2**1000 still fits a float, and nobody waits that many out.
    _key("health.max_restarts", "integer", "5", "1..1000", "restarts in a row without ready before `failed`"),
    _key("health.queue_depth_limit", "integer", None, "1..1000000", "waiting requests over this: `degraded`"),
    _key("health.stall_after", "duration", "60s", "1s..1d",
         "requests running, no token generated or prefilled this long: out of rotation, restarted"),
    _key("api", "mapping", None, "", "the agent's read-only status API"),
    _key("api.listen", "api listen", DEFAULT_API_LISTEN, "", "where the API listens; off loopback, it is logged"),
)
# fmt: on

KEYS: dict[str, Key] = {row.path: row for row in ROWS}


def _children() -> dict[str, tuple[Key, ...]]:
    found: dict[str, list[Key]] = {}
    for row in ROWS:
        found.setdefault(row.parent, []).append(row)
    return {parent: tuple(rows) for parent, rows in found.items()}


CHILDREN = _children()


def children(path: str) -> tuple[str, ...]:
    """The keys a mapping at `path` may hold ('' is the file's top level), in table order."""
    return tuple(row.name for row in CHILDREN[path])


def required(path: str) -> tuple[str, ...]:
    return tuple(row.name for row in CHILDREN[path] if row.required)
