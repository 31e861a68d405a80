"""Which host directories may be a model cache (`instances.hf_home`): pure.

The cache is bind-mounted read-write into every container and made the instance user's,
so it must be a directory of its own: never the root, a directory many things share, nor
one inside a tree another part of the system owns. Those trees are refused by class, each
named in the refusal: the system's own, people's homes, spools (a cron table or a mail
queue chowned to the instances' user, or writable from a container, runs or reads as
someone else), container runtimes' state (a container's root file system writable from
another container) and the system's logs.
"""

from __future__ import annotations

import re

# Classes of trees nothing of ours belongs in (the dir and everything under it): what each is, and its roots.
SYSTEM = "the system directory {tree}"
TREES = (
    (
        SYSTEM,
        ("/bin", "/boot", "/dev", "/efi", "/etc", "/proc", "/run", "/sbin", "/sys", "/usr", "/var/lock", "/var/run"),
    ),
    (SYSTEM, ("/lost+found",)),
    ("{tree}, a home directory", ("/home", "/root", "/var/home")),
    ("{tree}, a spool (mail, cron and at jobs, print queues)", ("/var/spool", "/var/mail")),
    (
        "{tree}, a container runtime's state",
        (
            "/var/lib/docker",
            "/var/lib/containers",
            "/var/lib/containerd",
            "/var/lib/lxc",
            "/var/lib/lxd",
            "/var/lib/incus",
            "/var/lib/machines",
            "/var/lib/kubelet",
            "/var/lib/rancher",
            "/var/snap/lxd",
        ),
    ),
    ("{tree}, the system's logs", ("/var/log",)),
)
LIB_TREE = re.compile(r"/lib(32|64|x32|exec)?(/.*)?")
# Directories that hold many things: a cache may live below one, never be one.
SHARED_DIRS = (
    "/",
    "/media",
    "/mnt",
    "/opt",
    "/srv",
    "/tmp",
    "/var",
    "/var/cache",
    "/var/lib",
    "/var/local",
    "/var/opt",
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
    if LIB_TREE.fullmatch(path):
        return f"is inside {SYSTEM.format(tree='/' + path.split('/')[1])}; give a directory of its own, {EXAMPLE}"
    for what, trees in TREES:
        tree = next((t for t in trees if path == t or path.startswith(t + "/")), None)
        if tree:
            return f"is inside {what.format(tree=tree)}; give a directory of its own, {EXAMPLE}"
    return ""
