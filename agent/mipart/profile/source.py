"""From a path to one YAML node tree, bounded: a regular file of at most MAX_BYTES, nested at
most MAX_DEPTH deep, so that no file can hang the reader, exhaust its memory or crash the parser.

libyaml composes nodes recursively in C (a profile 100,000 brackets deep overflows the C
stack and the process dies of SIGSEGV), but it parses events with a stack of its own; the
depth is therefore counted on the events first, and only a shallow document is composed.
"""

from __future__ import annotations

import os
import stat

import yaml

from mipart.profile.problems import Problem, ProfileError

MAX_BYTES = 1 << 20  # a real profile is a few KiB; 1 MiB leaves room for comments and long env values
MAX_DEPTH = 16  # the schema's deepest value is 4 levels down (services.NAME.env.KEY)
_KINDS = {
    stat.S_IFIFO: "a FIFO (named pipe)",
    stat.S_IFCHR: "a character device",
    stat.S_IFBLK: "a block device",
    stat.S_IFSOCK: "a socket",
}
_OPENERS = (yaml.MappingStartEvent, yaml.SequenceStartEvent)
_CLOSERS = (yaml.MappingEndEvent, yaml.SequenceEndEvent)

try:  # libyaml is ~10x faster; fall back quietly where it is missing.
    _Loader = yaml.CSafeLoader
except AttributeError:  # pragma: no cover - depends on the build of PyYAML
    _Loader = yaml.SafeLoader


def _whole_file(path: str, message: str) -> ProfileError:
    return ProfileError(path, [Problem(0, 0, message)])


def read_profile_bytes(path: str) -> bytes:
    """The file's bytes; one clear line for anything that is not a readable regular file.

    The type is checked before opening (opening a FIFO blocks until a writer comes, a device
    may act on open) and again on the open descriptor, which is non-blocking either way.
    """
    try:
        _check_kind(path, os.stat(path).st_mode)
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
    except FileNotFoundError:
        raise _whole_file(path, "no such file; write a profile there or pass --profile PATH") from None
    except PermissionError:
        raise _whole_file(path, "cannot read: permission denied; run as root or make the file readable") from None
    except (OSError, ValueError) as exc:  # ValueError: a NUL byte in the path
        reason = getattr(exc, "strerror", None) or str(exc)
        raise _whole_file(path, f"cannot read: {reason}; pass a readable regular file") from None
    try:
        _check_kind(path, os.fstat(fd).st_mode)
        chunks, size = [], 0
        while size <= MAX_BYTES:
            chunk = os.read(fd, MAX_BYTES + 1 - size)
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
    except OSError as exc:
        raise _whole_file(path, f"cannot read: {exc.strerror or exc}; pass a readable regular file") from None
    finally:
        os.close(fd)
    if size > MAX_BYTES:
        raise _whole_file(
            path, f"is larger than {MAX_BYTES // 1024} KiB; a profile is a short text file, pass the right one"
        )
    return b"".join(chunks)


def _check_kind(path: str, mode: int) -> None:
    if stat.S_ISDIR(mode):
        raise _whole_file(path, "is a directory; pass the profile file itself, e.g. /etc/mipart/profile.yaml")
    if not stat.S_ISREG(mode):
        kind = _KINDS.get(stat.S_IFMT(mode), "not a regular file")
        raise _whole_file(
            path, f"is {kind}, not a regular file; pass the profile file itself, e.g. /etc/mipart/profile.yaml"
        )


def decode(raw: bytes, path: str) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise ProfileError(path, [Problem(line, 1, "not valid UTF-8; save the profile as UTF-8 text")]) from None


def compose(text: str, path: str) -> yaml.Node:
    """The single document's root node; ProfileError for syntax, depth, no document or several."""
    if len(text) > MAX_BYTES:
        raise _whole_file(
            path, f"is larger than {MAX_BYTES // 1024} KiB; a profile is a short text file, pass the right one"
        )
    try:
        _check_depth(text, path)
        nodes = list(yaml.compose_all(text, Loader=_Loader))
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line, column = (mark.line + 1, mark.column + 1) if mark else (1, 1)
        what = _one_line(exc.problem or exc.context or "invalid YAML")
        raise ProfileError(
            path, [Problem(line, column, f"invalid YAML: {what}; fix the syntax at this point")]
        ) from None
    except yaml.reader.ReaderError as exc:  # a character YAML does not allow, at a position in the text
        before = text[: max(0, exc.position)]
        line, column = before.count("\n") + 1, len(before) - (before.rfind("\n") + 1) + 1
        code = exc.character if isinstance(exc.character, int) else ord(str(exc.character)[:1] or "\0")
        raise ProfileError(
            path, [Problem(line, column, f"invalid YAML: character U+{code:04X} is not allowed in YAML; remove it")]
        ) from None
    except yaml.YAMLError as exc:
        raise ProfileError(path, [Problem(1, 1, f"invalid YAML: {_one_line(str(exc))}; fix the syntax")]) from None
    nodes = [n for n in nodes if n is not None]
    if not nodes:
        raise ProfileError(path, [Problem(1, 1, "profile is empty; start it with 'version: 1'")])
    if len(nodes) > 1:
        second = nodes[1].start_mark
        raise ProfileError(
            path, [Problem(second.line + 1, 1, "more than one YAML document; keep a single document (remove '---')")]
        )
    return nodes[0]


def _check_depth(text: str, path: str) -> None:
    depth = 0
    for event in yaml.parse(text, Loader=_Loader):
        if isinstance(event, _OPENERS):
            depth += 1
            if depth > MAX_DEPTH:
                mark = event.start_mark
                raise ProfileError(
                    path,
                    [
                        Problem(
                            mark.line + 1,
                            mark.column + 1,
                            f"nested more than {MAX_DEPTH} levels deep; a profile needs 4 at most "
                            "(services.NAME.env.KEY)",
                        )
                    ],
                )
        elif isinstance(event, _CLOSERS):
            depth -= 1


def _one_line(text: str) -> str:
    return " ".join(text.split())
