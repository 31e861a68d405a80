"""Directories root makes and hands to less privileged users, through descriptors.

A path string is never checked and then used again: it is walked from `/` one component at a
time (openat with O_NOFOLLOW | O_DIRECTORY), and every later step (mkdirat, fchown, fchmod,
unlinkat) acts on the descriptor opened. Each directory passed through must be trusted: owned
by root (or by us), and writable by no one else unless sticky, where others may add names but
not replace ours (what they add is then not trusted in turn). So neither a symbolic link nor a
directory swapped in after a check can point one of root's steps at a file of another's
choosing (issue 20: a check-then-chown race gave an instance a root-owned directory).
"""

from __future__ import annotations

import errno
import os
import stat
import struct
from collections.abc import Iterator
from contextlib import contextmanager

OPEN_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
# POSIX ACLs as the kernel takes them in the system.posix_acl_* attributes (posix_acl_xattr.h):
# a version, then (tag, permissions, id) entries in tag order.
ACL_VERSION = 2
ACL_USER_OBJ, ACL_GROUP_OBJ, ACL_GROUP, ACL_MASK, ACL_OTHER = 0x01, 0x04, 0x08, 0x10, 0x20
ACL_NO_ID = 0xFFFFFFFF


class UnsafePath(Exception):
    """A path root must not act on; str() is the end of a one-line problem ("/x is owned by uid 1000")."""


def trusted(info: os.stat_result) -> bool:
    """Root's (or ours), and only its owner may replace what is in it."""
    owner_ok = info.st_uid in (0, os.geteuid())
    return owner_ok and (not info.st_mode & (stat.S_IWGRP | stat.S_IWOTH) or bool(info.st_mode & stat.S_ISVTX))


@contextmanager
def opened(path: str, make: bool = False) -> Iterator[int]:
    """A descriptor of directory `path` (absolute, normalised), every directory on the way
    trusted, the last one too. make: create missing components (root's, 0755)."""
    fd = os.open("/", OPEN_DIR)
    try:
        _check(fd, "/")
        walked = ""
        for name in [part for part in path.split("/") if part]:
            walked += "/" + name
            if make:
                _mkdir(fd, name, walked, 0o755)
            try:
                child = _open(fd, name, walked)
            except FileNotFoundError:
                raise UnsafePath(f"{walked} does not exist") from None
            os.close(fd)
            fd = child
            _check(fd, walked)
        yield fd
    finally:
        os.close(fd)


def make_dir(parent: int, name: str, where: str, uid: int, gid: int, mode: int, group_acl: int | None = None) -> int:
    """The directory `name` in `parent` (made if missing), given to uid:gid with `mode`; its descriptor.
    group_acl: what is made in it from now on is that group's too (grant_group).

    As root it first takes the directory back (a last start left it another's): its mode and ACL
    may be set only by its owner without CAP_FOWNER, which the units do not keep. Not being
    root, the owner stays ours and no ACL is needed (nginx's workers are ours too)."""
    _mkdir(parent, name, where, mode & 0o777)
    fd = _open(parent, name, where)
    try:
        root = os.geteuid() == 0
        if root:
            os.fchown(fd, 0, 0)
        os.fchmod(fd, mode)
        if root and group_acl is not None:
            grant_group(fd, group_acl, where)
        if root:
            os.fchown(fd, uid, gid)
    except BaseException:
        os.close(fd)
        raise
    return fd


def grant_group(fd: int, gid: int, where: str) -> None:
    """What is made in directory `fd` from now on is readable and writable by group `gid` (a default
    ACL: group:gid:rwx), whatever group the process making it is in, its umask still applying.
    A set-group-ID directory would do it too, but the units say RestrictSUIDSGID=."""
    entries = [(ACL_USER_OBJ, 7, ACL_NO_ID), (ACL_GROUP_OBJ, 0, ACL_NO_ID), (ACL_GROUP, 7, gid)]
    entries += [(ACL_MASK, 7, ACL_NO_ID), (ACL_OTHER, 0, ACL_NO_ID)]
    blob = struct.pack("<I", ACL_VERSION) + b"".join(struct.pack("<HHI", *entry) for entry in entries)
    try:
        os.setxattr(fd, "system.posix_acl_default", blob)
    except OSError as exc:
        raise UnsafePath(
            f"{where}: cannot give its group access ({exc.strerror}: does its file system take POSIX ACLs?)"
        ) from None


def adopt_dir(parent: int, name: str, where: str, owners: tuple[int, ...]) -> int | None:
    """The existing directory `name` in `parent` when one of `owners` (or root) owns it; None when missing."""
    try:
        fd = _open(parent, name, where)
    except FileNotFoundError:
        return None
    info = os.fstat(fd)
    if info.st_uid not in (0, os.geteuid(), *owners):
        os.close(fd)
        raise UnsafePath(f"{where} is owned by uid {info.st_uid}, not root or the user it is for")
    return fd


def remove_entry(parent: int, name: str, where: str) -> None:
    """Unlink `name` in `parent` (a stale socket), or remove it when it is an empty directory; gone is fine."""
    try:
        os.unlink(name, dir_fd=parent)
    except FileNotFoundError:
        pass
    except IsADirectoryError:
        try:
            os.rmdir(name, dir_fd=parent)
        except OSError as exc:
            raise UnsafePath(f"{where} is a directory that cannot be removed ({exc.strerror})") from None


def _mkdir(parent: int, name: str, where: str, mode: int) -> None:
    try:
        os.mkdir(name, mode, dir_fd=parent)
    except FileExistsError:
        pass
    except OSError as exc:
        raise UnsafePath(f"{where} cannot be made ({exc.strerror})") from None


def _open(parent: int, name: str, where: str) -> int:
    try:
        return os.open(name, OPEN_DIR, dir_fd=parent)
    except FileNotFoundError:
        raise
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.ENOTDIR):
            raise UnsafePath(f"{where} is not a directory (a symbolic link or a file)") from None
        raise UnsafePath(f"{where} cannot be opened ({exc.strerror})") from None


def _check(fd: int, where: str) -> None:
    info = os.fstat(fd)
    if not trusted(info):
        mode = stat.S_IMODE(info.st_mode)
        raise UnsafePath(
            f"{where} is owned by uid {info.st_uid} with mode {mode:04o}; it must be root's and writable by root alone"
        )
