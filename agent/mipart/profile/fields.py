"""Checks for single profile values, each pointing at its YAML node when it fails.

Every string that can reach a unit file, env file, argv or nginx config passes one of
the patterns here, none of which admits control characters, so nothing can inject.
"""

from __future__ import annotations

import re
from typing import Iterable

import yaml

from mipart.gpu import modes
from mipart.profile.nodes import NodeChecker
from mipart.profile.schema import RUNTIMES, VISIBLE_DEVICE_VARS, GpuOverride, Listen

COMPUTE_CHOICES = modes.COMPUTE_MODES
MEMORY_CHOICES = modes.MEMORY_MODES
RUNTIME_CHOICES = RUNTIMES
VISIBLE_CHOICES = VISIBLE_DEVICE_VARS

SERVICE_NAME = re.compile(r"[a-z][a-z0-9_-]{0,31}")
HUB_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,95}(/[A-Za-z0-9][A-Za-z0-9._-]{0,95})?")
SAFE_TOKEN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._/:+@-]{0,199}")
IMAGE_REF = re.compile(r"[a-z0-9][a-z0-9._/:-]*(:[A-Za-z0-9_.-]{1,128})?(@sha256:[0-9a-f]{64})?")
ENV_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
UNIT_NAME = re.compile(r"[A-Za-z0-9:_.\\-]+(@[A-Za-z0-9:_.\\-]*)?(\.(service|socket|scope|slice|target|mount|path|timer))?")
USER_NAME = re.compile(r"[a-z_][a-z0-9_-]{0,31}")
RANGE_TEXT = re.compile(r"\s*\d+\s*(-\s*\d+\s*)?(,\s*\d+\s*(-\s*\d+\s*)?)*")
HOST = re.compile(r"[A-Za-z0-9.-]{1,253}|\[[0-9A-Fa-f:.]+\]|\*")
MAX_INDEX = 1023
ALL = "all"  # index_set's answer for 'all', kept apart from None (= invalid)
ENV_SET_BY_MIPART = ("HF_HOME",)


def format_indices(indices: Iterable[int]) -> str:
    """[0,1,2,5] -> '0-2,5': compact and the same syntax the profile accepts."""
    out: list[str] = []
    ordered = sorted(indices)
    start = prev = None
    for i in ordered + [None]:
        if start is not None and (i is None or i != prev + 1):
            out.append(str(start) if start == prev else f"{start}-{prev}")
            start = None
        if i is not None and start is None:
            start = i
        prev = i
    return ",".join(out)


def max_num_seqs(args: tuple[str, ...]) -> int | None:
    """The per-instance concurrency vLLM will accept, read from its own flag."""
    for i, arg in enumerate(args):
        value = arg.split("=", 1)[1] if arg.startswith("--max-num-seqs=") else None
        if arg == "--max-num-seqs" and i + 1 < len(args):
            value = args[i + 1]
        if value is not None and value.isdigit() and int(value) > 0:
            return int(value)
    return None


def api_port(listen: str) -> int | None:
    if listen.startswith("unix:"):
        return None
    return int(listen.rsplit(":", 1)[1])


class Checker(NodeChecker):
    """The profile's own kinds of value: names, paths, argv, env, ports, index sets, modes."""

    def safe_token(self, node, where) -> str | None:
        return self.patterned(node, where, SAFE_TOKEN, "a plain name; use letters, digits and . _ / : + @ -")

    def model(self, node, where) -> str | None:
        value = self.string(node, where, "a model")
        if value is None:
            return None
        if value.startswith("/"):
            if not SAFE_TOKEN.fullmatch(value[1:]) or "/../" in value + "/" :
                self.problem(node, f"{where} {value!r} is not a plain absolute path; use letters, digits and . _ / - only")
                return None
            return value
        if not HUB_ID.fullmatch(value):
            self.problem(node, f"{where} {value!r} is neither a Hugging Face id (org/name) nor an absolute path; e.g. meta-llama/Llama-3.1-8B-Instruct or /models/llama")
            return None
        return value

    def abs_path(self, node, where) -> str | None:
        value = self.string(node, where, "an absolute path")
        if value is None:
            return None
        if not value.startswith("/") or not SAFE_TOKEN.fullmatch(value[1:] or "x") or "/../" in value + "/":
            self.problem(node, f"{where} {value!r} is not a plain absolute path; e.g. /var/lib/mipart/huggingface")
            return None
        return value

    def image(self, node, where) -> str | None:
        return self.patterned(node, where, IMAGE_REF, "an image reference; e.g. rocm/vllm:latest")

    def user_name(self, node, where) -> str | None:
        return self.patterned(node, where, USER_NAME, "a system user name; e.g. mipart")

    def argv(self, node, where, non_empty=False) -> tuple[str, ...] | None:
        if not isinstance(node, yaml.SequenceNode):
            self.problem(node, f"{where} must be a list of strings, e.g. [\"--max-num-seqs\", \"512\"]")
            return None
        values = [self.string(item, f"{where}[{i}]", "a string") for i, item in enumerate(node.value)]
        if any(v is None for v in values):
            return None
        if non_empty and not values:
            self.problem(node, f"{where} is empty; give the program to run, e.g. [vllm, serve]")
            return None
        return tuple(values)

    def env(self, node, where) -> tuple[tuple[str, str], ...] | None:
        items = self.mapping(node, where, None)
        if items is None:
            return None
        pairs = []
        for key, value_node in items.items():
            key_node = self.key_nodes[id(value_node)]
            if not ENV_KEY.fullmatch(key):
                self.problem(key_node, f"{where} key {key!r} is not a variable name; use letters, digits and _, not starting with a digit")
                continue
            if key in VISIBLE_DEVICE_VARS or key in ENV_SET_BY_MIPART:
                self.problem(key_node, f"{where}.{key} is set by mipart for each instance; remove it (choose the variable with visible_devices_env, the cache with instances.hf_home)")
                continue
            value = self.string(value_node, f"{where}.{key}")
            if value is not None:
                pairs.append((key, value))
        return tuple(pairs)

    def unit_names(self, node, where) -> tuple[str, ...]:
        names = self.argv(node, where) or ()
        good = []
        for item, name in zip(node.value, names):
            if not UNIT_NAME.fullmatch(name) or name.startswith("-"):
                self.problem(item, f"{where} entry {name!r} is not a systemd unit name; e.g. my-inference.service")
            else:
                good.append(name if "." in name.split("@")[-1] else name + ".service")
        return tuple(good)

    # -- ports and addresses -----------------------------------------------
    def port(self, node, where, value) -> int | None:
        if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 65535:
            self.problem(node, f"{where} port {value!r} is out of range; use 1-65535")
            return None
        return value

    def listen(self, node, where) -> Listen | None:
        raw = self.scalar(node, where, "a port or host:port")
        if raw is None:
            return None
        if isinstance(raw, int) and not isinstance(raw, bool):
            port = self.port(node, where, raw)
            return Listen("0.0.0.0", port) if port else None
        text = str(raw)
        host, sep, port_text = text.rpartition(":")
        if not sep or not port_text.isdigit() or not HOST.fullmatch(host):
            self.problem(node, f"{where} {text!r} is not a port or host:port; e.g. 8040 or 127.0.0.1:8040")
            return None
        port = self.port(node, where, int(port_text))
        return Listen(host.strip("[]"), port) if port else None

    def api_listen(self, node, where) -> str | None:
        text = self.string(node, where, "host:port or unix:/run/mipart/NAME.sock")
        if text is None:
            return None
        if text.startswith("unix:"):
            path = text[5:]
            if not path.startswith("/run/mipart/") or not SAFE_TOKEN.fullmatch(path[1:]):
                self.problem(node, f"{where} socket {path!r} must be a plain path under /run/mipart/, e.g. unix:/run/mipart/api.sock")
                return None
            return text
        listen = self.listen(node, where)
        return str(listen) if listen else None

    # -- index sets: all | 3 | [0, 1] | "0-7,12" --------------------------
    def index_set(self, node, where, noun: str) -> tuple[int, ...] | None:
        """ALL for 'all', None when the value was bad (and reported)."""
        hint = f"use all, a list like [0, 1], or a range like \"0-7\" of {noun} indices"
        if isinstance(node, yaml.SequenceNode):
            values = [self.integer(item, f"{where}[{i}]", 0, MAX_INDEX) for i, item in enumerate(node.value)]
            if any(v is None for v in values):
                return None
        else:
            raw = self.scalar(node, where, hint)
            if raw is None:
                return None
            if raw == "all":
                return ALL
            if isinstance(raw, int) and not isinstance(raw, bool):
                values = [raw]
            elif isinstance(raw, str) and RANGE_TEXT.fullmatch(raw):
                values = self._expand_ranges(node, where, raw)
                if values is None:
                    return None
            else:
                self.problem(node, f"{where} is {node.value!r}; {hint}")
                return None
        if not values:
            self.problem(node, f"{where} is empty; {hint}")
            return None
        duplicates = sorted({v for v in values if values.count(v) > 1})
        if duplicates:
            self.problem(node, f"{where} lists {format_indices(duplicates)} more than once; list each index once")
            return None
        if any(v < 0 or v > MAX_INDEX for v in values):
            self.problem(node, f"{where} has an index outside 0-{MAX_INDEX}; {hint}")
            return None
        return tuple(sorted(values))

    def _expand_ranges(self, node, where, text: str) -> list[int] | None:
        values: list[int] = []
        for part in text.replace(" ", "").split(","):
            low, _, high = part.partition("-")
            start, end = int(low), int(high or low)
            if end < start:
                self.problem(node, f"{where} range {part!r} runs backwards; write it low-high, e.g. \"{end}-{start}\"")
                return None
            if end > MAX_INDEX:
                self.problem(node, f"{where} range {part!r} goes past {MAX_INDEX}; use real indices")
                return None
            values.extend(range(start, end + 1))
        return values

    # -- cross-field rules that need the node ------------------------------
    def compute_memory_pair(self, node, compute: str, memory: str, where: str) -> bool:
        if modes.compatible(compute, memory):
            return True
        fits = ", ".join(modes.memory_modes_for(compute)) or "none"
        self.problem(node, f"{where} {compute} cannot run under memory mode {memory} (the driver rejects it); {compute} needs {fits}")
        return False

    def overrides(self, node, memory: str | None, select: tuple[int, ...] | None) -> tuple[GpuOverride, ...]:
        if not isinstance(node, yaml.SequenceNode):
            self.problem(node, "gpus.overrides must be a list, e.g. [{select: [6, 7], compute: CPX}]")
            return ()
        result: list[GpuOverride] = []
        claimed: dict[int, int] = {}
        for i, item in enumerate(node.value):
            where = f"gpus.overrides[{i}]"
            items = self.mapping(item, where, ("select", "compute"), required=("select", "compute"))
            if not items or "select" not in items or "compute" not in items:
                continue
            chosen = self.index_set(items["select"], f"{where}.select", "physical GPU")
            compute = self.enum(items["compute"], f"{where}.compute", COMPUTE_CHOICES)
            if chosen == ALL:
                self.problem(items["select"], f"{where}.select must name GPUs, not all; set gpus.compute for every GPU instead")
                continue
            if chosen is None or compute is None:
                continue
            if memory and not modes.compatible(compute, memory):
                fits = ", ".join(modes.memory_modes_for(compute))
                self.problem(items["compute"], f"{where}.compute {compute} conflicts with the hive-wide gpus.memory {memory}; {compute} needs {fits}, and memory mode is the same for every GPU")
            outside = [g for g in chosen if select is not None and g not in select]
            if outside:
                self.problem(items["select"], f"{where}.select {format_indices(outside)} is not in gpus.select; override only selected GPUs")
            overlap = [g for g in chosen if g in claimed]
            if overlap:
                self.problem(items["select"], f"{where}.select {format_indices(overlap)} is already overridden by gpus.overrides[{claimed[overlap[0]]}]; give each GPU one override")
            for g in chosen:
                claimed.setdefault(g, i)
            result.append(GpuOverride(select=chosen, compute=compute))
        return tuple(result)
