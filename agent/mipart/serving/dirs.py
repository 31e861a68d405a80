"""The directories the launcher gives an instance while it is still root, through descriptors (safedirs).

- its socket directory, `<serving dir>/sockets/N`: the server's (or root's, for a container), group
  nginx's workers, mode 0750, so nobody else may even enter it, let alone listen in it; its
  default ACL gives what is made in it to that group too (group:www-data:rwx), so under the
  server's umask (0007) the socket is one nginx's workers may connect to. A socket left by the
  last server is removed: vLLM binds the path without unlinking it;
- its HOME, `<state dir>/home/N`, 0700, when it runs as a uid of its own: vLLM's, torch's and
  Triton's compile caches, which no other instance may read or plant;
- the model cache, `instances.hf_home`, resolved, checked and, when missing, made the cache
  owner's (shared through its group: 0770); its parents must be root's and writable by root alone.
"""

from __future__ import annotations

import os
from pathlib import Path

from mipart import safedirs
from mipart.cachedir import cache_dir_problem
from mipart.errors import UserError
from mipart.names import NGINX_WORKER_USER
from mipart.paths import instance_home
from mipart.serving.spec import InstanceSpec

SOCKET_DIR_MODE = 0o750
HOME_MODE = 0o700
CACHE_MODE = 0o770  # no set-group-ID: the units' RestrictSUIDSGID= refuses it; the servers' group is its group
SERVER_UMASK = 0o007  # the socket 0770 (its group connects), the shared cache's files group-writable


def worker_gid() -> int:
    """The group of nginx's workers, which may enter every instance's socket directory."""
    import grp

    try:
        return grp.getgrnam(NGINX_WORKER_USER).gr_gid
    except KeyError:
        raise UserError(
            f"group {NGINX_WORKER_USER} does not exist; install nginx (its workers run as {NGINX_WORKER_USER})"
        ) from None


def prepare_socket_dir(spec: InstanceSpec, uid: int) -> None:
    """`<serving dir>/sockets/N`, uid's, group nginx's workers (also of what is made in it), 0750, with no socket
    left in it."""
    socket = Path(spec.socket)
    directory = socket.parent
    gid = worker_gid() if os.geteuid() == 0 else os.getegid()
    try:
        with safedirs.opened(str(directory.parent)) as sockets:
            fd = safedirs.make_dir(sockets, directory.name, str(directory), uid, gid, SOCKET_DIR_MODE, group_acl=gid)
            try:
                safedirs.remove_entry(fd, socket.name, str(socket))
            finally:
                os.close(fd)
    except safedirs.UnsafePath as exc:
        raise UserError(
            f"instance {spec.number}: socket directory: {exc}; mipart-agent makes {directory.parent} (restart it)"
        ) from None


def prepare_home(number: int, uid: int, gid: int) -> str:
    """`<state dir>/home/N`, uid's alone; its path."""
    home = instance_home(number)
    try:
        with safedirs.opened(str(home.parent.parent), make=True) as state:
            homes = safedirs.make_dir(state, home.parent.name, str(home.parent), 0, 0, 0o755)
            try:
                os.close(safedirs.make_dir(homes, home.name, str(home), uid, gid, HOME_MODE))
            finally:
                os.close(homes)
    except safedirs.UnsafePath as exc:
        raise UserError(f"instance {number}: HOME: {exc}") from None
    return str(home)


def prepare_cache(spec: InstanceSpec, uid: int, gid: int) -> str:
    """hf_home with its links resolved, still a directory of its own; made uid:gid (0770) when missing.

    Returns the resolved path, which a container mounts: the one checked and opened."""
    real = os.path.realpath(spec.hf_home)
    where = f"instance {spec.number}: instances.hf_home {spec.hf_home}"
    problem = cache_dir_problem(real)
    if problem:
        raise UserError(f"{where} resolves to {real}, which {problem}")
    if os.geteuid() != 0:  # nothing to make, and no one to give it to: it is ours as it is
        return real
    parent, name = os.path.split(real)
    try:
        with safedirs.opened(parent, make=True) as fd:
            leaf = safedirs.adopt_dir(fd, name, real, (uid,))
            if leaf is None:
                leaf = safedirs.make_dir(fd, name, real, uid, gid, CACHE_MODE)
            os.close(leaf)
    except safedirs.UnsafePath as exc:
        raise UserError(
            f"{where}: {exc}; the model cache and its parents must not be another user's (chown root the parents)"
        ) from None
    return real
