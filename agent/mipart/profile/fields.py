"""Checks for single profile values, each pointing at its YAML node when it fails.

Every string that can reach a unit file, env file, argv or nginx config passes one of
the patterns here, none of which admits control characters, so nothing can inject.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

import yaml

from mipart.cachedir import cache_dir_problem
from mipart.gpu import modes
from mipart.names import CACHE_VAR, RESERVED_ENV_PREFIX, VISIBLE_DEVICE_VARS
from mipart.profile import addresses
from mipart.profile.indices import IndexChecker
from mipart.profile.nodes import cut, shown
from mipart.profile.schema import Listen

COMPUTE_CHOICES = modes.COMPUTE_MODES

SERVICE_NAME = re.compile(r"[a-z][a-z0-9_-]{0,31}")
HUB_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,95}(/[A-Za-z0-9][A-Za-z0-9._-]{0,95})?")
SAFE_TOKEN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._/:+@-]{0,199}")
PLAIN_PATH = re.compile(r"/[A-Za-z0-9._/+@-]{0,199}")  # no ':' either: docker -v splits on it
# docker's reference grammar: [registry[:port]/]name[/name...][:tag][@sha256:digest]
_IMAGE_PART = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_REGISTRY = r"(?:(?:[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)+|localhost)(?::[0-9]{1,5})?|[A-Za-z0-9-]+:[0-9]{1,5})/"
IMAGE_REF = re.compile(
    rf"(?:{_REGISTRY})?{_IMAGE_PART}(?:/{_IMAGE_PART})*(?::[A-Za-z0-9_][A-Za-z0-9_.-]{{0,127}})?(?:@sha256:[0-9a-f]{{64}})?"
)
MAX_IMAGE = 255
ENV_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,254}")
UNIT_NAME = re.compile(
    r"[A-Za-z0-9:_.\\-]{1,200}(@[A-Za-z0-9:_.\\-]{0,50})?(\.(service|socket|scope|slice|target|mount|path|timer))?"
)
USER_NAME = re.compile(r"[a-z_][a-z0-9_-]{0,31}")
SEQS = re.compile(r"[1-9][0-9]{0,8}")
# A request header nginx can read as $http_<name>: RFC 9110 allows more token characters, but
# nginx takes a header name with any but letters, digits and '-' as invalid and drops it
# (ignore_invalid_headers on, underscores_in_headers off: their defaults). docs/routing.md.
HEADER_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9-]{0,63}", re.ASCII)
HTTP_TOKEN = re.compile(r"[A-Za-z0-9!#$%&'*+.^_`|~-]+", re.ASCII)
# execve(2) takes at most MAX_ARG_STRLEN (32 pages: 131072 bytes, with its NUL) per argument or
# KEY=value entry, and argv and environment together within ARG_MAX (a quarter of the 8 MiB
# default stack: 2 MiB); one instance's whole exec stays under half of that.
MAX_ARG_STRLEN = 131072
MAX_EXEC_BYTES = 1 << 20


def max_num_seqs(args: tuple[str, ...]) -> int | None:
    """The per-instance concurrency vLLM will accept, read from its own flag."""
    for i, arg in enumerate(args):
        value = arg.split("=", 1)[1] if arg.startswith("--max-num-seqs=") else None
        if arg == "--max-num-seqs" and i + 1 < len(args):
            value = args[i + 1]
        if value is not None and SEQS.fullmatch(value):
            return int(value)
    return None


def exec_bytes(argv: Iterable[str], env: Iterable[tuple[str, str]]) -> int:
    """What execve copies: each argument and KEY=value entry with its NUL, and the pointers."""
    total = sum(len(a.encode()) + 1 + 8 for a in argv)
    return total + sum(len(k.encode()) + len(v.encode()) + 2 + 8 for k, v in env)


class Checker(IndexChecker):
    """The profile's own kinds of value: names, paths, argv, env, addresses; index sets from IndexChecker."""

    def safe_token(self, node, where) -> str | None:
        return self.patterned(node, where, SAFE_TOKEN, "a plain name; use letters, digits and . _ / : + @ -")

    def model(self, node, where) -> str | None:
        value = self.string(node, where, "a model")
        if value is None:
            return None
        if value.startswith("/"):
            if not SAFE_TOKEN.fullmatch(value[1:]) or not _no_dots(value):
                self.problem(
                    node, f"{where} {shown(value)} is not a plain absolute path; use letters, digits and . _ / - only"
                )
                return None
            return value
        if not HUB_ID.fullmatch(value):
            self.problem(
                node,
                f"{where} {shown(value)} is neither a Hugging Face id (org/name) nor an absolute path; e.g. "
                "meta-llama/Llama-3.1-8B-Instruct or /models/llama",
            )
            return None
        return value

    def abs_path(self, node, where) -> str | None:
        value = self.string(node, where, "an absolute path")
        if value is None:
            return None
        if not PLAIN_PATH.fullmatch(value) or not _no_dots(value):
            self.problem(node, f"{where} {shown(value)} is not a plain absolute path; e.g. /var/lib/mipart/huggingface")
            return None
        return value

    def cache_dir(self, node, where) -> str | None:
        """A dedicated directory: it is mounted read-write into every container and chowned."""
        value = self.abs_path(node, where)
        problem = cache_dir_problem(value) if value else ""
        if problem:
            self.problem(node, f"{where} {shown(value)} {problem}")
            return None
        return value

    def env_files(self, node, where) -> tuple[str, ...] | None:
        if not isinstance(node, yaml.SequenceNode):
            self.problem(node, f"{where} must be a list of absolute paths, e.g. [/etc/mipart/secrets/chat.env]")
            return None
        paths = [self.abs_path(item, f"{where}[{i}]") for i, item in enumerate(node.value)]
        if any(p is None for p in paths):
            return None
        twice = sorted({p for p in paths if paths.count(p) > 1})
        if twice:
            self.problem(node, f"{where} lists {shown(twice[0])} more than once; list each file once")
            return None
        return tuple(paths)

    def image(self, node, where) -> str | None:
        value = self.string(node, where, "an image reference")
        if value is not None and (len(value) > MAX_IMAGE or not IMAGE_REF.fullmatch(value)):
            self.problem(node, f"{where} {shown(value)} is not an image reference; e.g. rocm/vllm:latest")
            return None
        return value

    def header_name(self, node, where) -> str | None:
        """A request header name, as the client writes it (nginx matches it in any case)."""
        value = self.string(node, where, "a request header name")
        if value is None or HEADER_NAME.fullmatch(value):
            return value
        odd = sorted({ch for ch in value if not (ch.isascii() and (ch.isalnum() or ch == "-"))})
        if len(value) > 64:
            why = f"is {len(value)} characters; keep it to 64"
        elif not HTTP_TOKEN.fullmatch(value):
            why = "is not an HTTP header name (RFC 9110 token)"
        elif odd:
            why = (
                f"has {shown(''.join(odd))}: nginx drops a request header whose name holds anything but "
                "letters, digits and '-'"
            )
        else:
            why = "starts with '-'"
        self.problem(node, f"{where} {shown(value)} {why}; use letters, digits and '-', e.g. X-Session-Id")
        return None

    def user_name(self, node, where) -> str | None:
        return self.patterned(node, where, USER_NAME, "a system user name; e.g. mipart")

    def argv(self, node, where, non_empty=False) -> tuple[str, ...] | None:
        if not isinstance(node, yaml.SequenceNode):
            self.problem(node, f'{where} must be a list of strings, e.g. ["--max-num-seqs", "512"]')
            return None
        values = [self.string(item, f"{where}[{i}]", "a string") for i, item in enumerate(node.value)]
        for i, (item, value) in enumerate(zip(node.value, values, strict=True)):
            if value is not None and len(value.encode()) >= MAX_ARG_STRLEN:
                self.problem(
                    item,
                    f"{where}[{i}] is {len(value.encode())} bytes; the kernel takes at most {MAX_ARG_STRLEN - 1} per "
                    "argument (MAX_ARG_STRLEN)",
                )
                values[i] = None
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
        pairs, ok = [], True
        for key, value_node in items.items():
            key_node = self.key_nodes[id(value_node)]
            value = self.string(value_node, f"{where}.{cut(key)}")
            if not ENV_KEY.fullmatch(key):
                self.problem(
                    key_node,
                    f"{where} key {shown(key)} is not a variable name; use letters, digits and _, not starting with a "
                    "digit",
                )
            elif key in VISIBLE_DEVICE_VARS or key == CACHE_VAR:
                self.problem(
                    key_node,
                    f"{where}.{key} is set by mipart for each instance; remove it (choose the variable with "
                    "visible_devices_env, the cache with instances.hf_home)",
                )
            elif key.startswith(RESERVED_ENV_PREFIX):
                self.problem(
                    key_node,
                    f"{where}.{key} is reserved: mipart tags its servers with {RESERVED_ENV_PREFIX}* variables; use "
                    "another name",
                )
            elif value is not None and len(key) + len(value.encode()) + 2 > MAX_ARG_STRLEN:
                entry = len(key) + len(value.encode()) + 2
                self.problem(
                    value_node,
                    f"{where}.{key} makes a {entry}-byte KEY=value entry; the kernel takes at most {MAX_ARG_STRLEN} "
                    "bytes per entry, its NUL included (MAX_ARG_STRLEN)",
                )
            elif value is not None:
                pairs.append((key, value))
                continue
            ok = False
        return tuple(pairs) if ok else None

    def unit_names(self, node, where) -> tuple[str, ...]:
        names = self.argv(node, where) or ()
        good = []
        for item, name in zip(node.value, names, strict=False):
            if not UNIT_NAME.fullmatch(name) or name.startswith("-"):
                self.problem(item, f"{where} entry {shown(name)} is not a systemd unit name; e.g. my-inference.service")
            else:
                good.append(name if "." in name.split("@")[-1] else name + ".service")
        return tuple(good)

    # -- addresses ---------------------------------------------------------
    def listen(self, node, where) -> Listen | None:
        return self._address(node, where, "a port or host:port", addresses.parse_listen)

    def api_listen(self, node, where) -> str | None:
        return self._address(node, where, "host:port or unix:/run/mipart/NAME.sock", addresses.parse_api_listen)

    def _address(self, node, where, want: str, parse):
        text = self.text(node, where, want)
        if text is None:
            return None
        value, error = parse(text)
        if error:
            self.problem(node, f"{where} {error}")
        return value


def _no_dots(path: str) -> bool:
    """No '.' or '..' component: the path means what it says, with nothing to resolve."""
    return not any(part in (".", "..") for part in path.split("/"))
