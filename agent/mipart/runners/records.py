"""Which process is which, in records only root can write: never an environment any process may set.

A record names a process by its pid and its start time (/proc/PID/stat, in clock ticks since
boot), so a pid the kernel has since given to another process does not match it. It lives in
a directory that is root's and writable by root alone (the run dir, or the serving dir's
`launched/`), is written through that directory's descriptor and is read only when root (or
we) own it:

- `launched/N.json`: the launcher writes it just before it execs instance N's server (exec
  keeps the pid and the start time), with the spec's digest and the uid the server runs as.
  The agent learns which spec a server runs from it, and the process runner finds its
  servers by it; a server, which runs as another user, can change neither (issue 20: a
  native server could erase the digest in its environment and escape every restart).
- `agent.json`: the agent's own, read by `mipart bench sweep` to find the agent to reload.
"""

from __future__ import annotations

import json
import os
import stat
from dataclasses import dataclass
from pathlib import Path

from mipart import safedirs
from mipart.paths import launched_dir
from mipart.runners.procfs import alive, start_time

AGENT = "agent.json"
MAX_RECORD = 4096
MODE = 0o644  # pids and digests: nothing secret


@dataclass(frozen=True)
class Record:
    pid: int
    start: int
    fields: dict[str, object]


@dataclass(frozen=True)
class Launch:
    number: int
    pid: int
    digest: str
    uid: int


def write_record(directory: Path, name: str, pid: int | None = None, **fields: object) -> None:
    """The record of process `pid` (default: this one), atomically, in `directory` (which must be trusted:
    safedirs)."""
    pid = pid or os.getpid()
    text = json.dumps({"pid": pid, "start": start_time(pid), **fields}, sort_keys=True) + "\n"
    temporary = f".{name}.{pid}"
    with safedirs.opened(str(directory)) as fd:
        out = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC, MODE, dir_fd=fd)
        try:
            os.write(out, text.encode())
            os.fchmod(out, MODE)
            os.fsync(out)
        finally:
            os.close(out)
        os.rename(temporary, name, src_dir_fd=fd, dst_dir_fd=fd)


def read_record(path: Path) -> Record | None:
    """The record at `path` when root (or we) wrote it and its process still runs (not a zombie); else None."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode) or not safedirs.trusted(info):
            return None
        data = json.loads(os.read(fd, MAX_RECORD))
    except (OSError, ValueError):
        return None
    finally:
        os.close(fd)
    if not isinstance(data, dict):
        return None
    pid, start = data.pop("pid", None), data.pop("start", None)
    if type(pid) is not int or type(start) is not int or pid <= 0 or start_time(pid) != start or not alive(pid):
        return None  # another process now has the pid, or it is gone (a zombie has its start time still)
    return Record(pid, start, data)


def write_launch(number: int, digest: str, uid: int) -> None:
    """By the launcher, as root, just before it execs the server as `uid` (in paths.launched_dir)."""
    write_record(launched_dir(), f"{number}.json", digest=digest, uid=uid)


def launches(serving: Path) -> dict[int, Launch]:
    """instance number -> its live server, from the records under the serving dir `serving`."""
    try:
        names = os.listdir(launched_dir(serving))
    except OSError:
        return {}
    found = {}
    for name in names:
        number = name.removesuffix(".json")
        if not (name.endswith(".json") and number.isascii() and number.isdigit()):
            continue
        record = read_record(launched_dir(serving) / name)
        if record is None:
            continue
        digest, uid = record.fields.get("digest"), record.fields.get("uid")
        if isinstance(digest, str) and type(uid) is int:
            found[int(number)] = Launch(int(number), record.pid, digest, uid)
    return found
