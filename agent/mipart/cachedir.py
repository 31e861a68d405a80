"""Which host directories may be a model cache (`instances.hf_home`): pure.

The cache is bind-mounted read-write into every container and made the instance user's,
so it must be a directory of its own: never the root, a system tree, nor a directory
many things share (its contents, not only our files, would be exposed and chowned).
"""

from __future__ import annotations

import re

# Trees nothing of ours belongs in (the dir and everything under it).
SYSTEM_TREES = (
    "/bin",
    "/boot",
    "/dev",
    "/efi",
    "/etc",
    "/proc",
    "/root",
    "/run",
    "/sbin",
    "/sys",
    "/usr",
    "/var/lock",
    "/var/run",
    "/lost+found",
)
LIB_TREE = re.compile(r"/lib(32|64|x32|exec)?(/.*)?")
# Directories that hold many things: a cache may live below one, never be one.
SHARED_DIRS = (
    "/",
    "/home",
    "/media",
    "/mnt",
    "/opt",
    "/srv",
    "/tmp",
    "/var",
    "/var/cache",
    "/var/lib",
    "/var/local",
    "/var/log",
    "/var/mail",
    "/var/opt",
    "/var/spool",
    "/var/tmp",
)
EXAMPLE = "e.g. /var/lib/mipart/huggingface"


def normal(path: str) -> str:
    """/a//b/ -> /a/b (the path is already free of '.' and '..')."""
    return "/" + "/".join(part for part in path.split("/") if part)


def cache_dir_problem(path: str) -> str:
    """Why PATH cannot be the model cache ("" when it can), as the end of a problem line."""
    path = normal(path)
    if path in SHARED_DIRS:
        return (
            "is a directory many things share, and every container would get it read-write; "
            f"give a directory of its own, {EXAMPLE}"
        )
    tree = next((t for t in SYSTEM_TREES if path == t or path.startswith(t + "/")), None)
    if tree or LIB_TREE.fullmatch(path):
        return (
            f"is inside the system directory {tree or '/' + path.split('/')[1]}; give a directory of its own, {EXAMPLE}"
        )
    return ""
