"""`mipart exec-nginx [--front]`: the ExecStart of mipart-nginx.service (the back layer) and of
mipart-nginx-front.service. It takes over the listening sockets of workers a killed master left
(strays), tells them to finish their streams and quit, and execs nginx with the sockets, so the
unit's main process is nginx itself. The front also takes copies of the TCP listeners a back
master of ours still holds: a single-layer mipart's, during the handover (daemon.handover).

Why: a SIGKILLed master's workers keep serving a frozen config and hold the port (or the back's
unix socket), and a new master cannot bind it. With the unit's KillMode=process they outlive the
master; this hands their sockets to the next one, as the process runner does (docs/faults.md), so
neither a stream in flight nor a waiting connection is lost.
"""

from __future__ import annotations

import os
from typing import NoReturn

from mipart.errors import UserError
from mipart.nginx import procs as nginx_procs
from mipart.nginx.files import BACK, FRONT, Layer, NginxFiles, unix_listeners


def inherited_sockets(files: NginxFiles) -> list[int]:
    """Copies of the listening sockets the new master of FILES' layer starts with (see the module doc);
    its strays are told to quit, their sockets live on in the copies."""
    strays = nginx_procs.scan(files.prefix).strays
    inherited = nginx_procs.take_over(strays)
    if files.layer == FRONT:
        inherited += back_listeners(NginxFiles.of(BACK, files.prefix.parent))
    nginx_procs.quit_gracefully(strays)  # they close their copies at once; the sockets live on in ours
    remove_stale_sockets(files)
    return inherited


def remove_stale_sockets(files: NginxFiles) -> None:
    """A unix socket file of the config's that no socket listens on (a master that inherited its socket
    leaves the file behind when it stops) would make nginx's bind() fail: it goes."""
    try:
        paths = unix_listeners(files.conf.read_text())
    except OSError:
        return  # nginx says so itself
    bound = nginx_procs.unix_listening_paths()
    for path in paths:
        if path not in bound and os.path.exists(path):
            os.unlink(path)


def back_listeners(back: NginxFiles) -> list[int]:
    """Copies of the TCP listening sockets the back layer's masters hold: none but during a handover.
    Its unix sockets stay its own (nginx deletes the file of an inherited socket it does not listen on)."""
    copies = []
    for master in nginx_procs.scan(back.prefix).masters:
        for fd in nginx_procs.listening_sockets(master, unix=False).values():
            try:
                copies.append(nginx_procs.take_fd(master, fd))
            except OSError:  # the front then binds the port itself, once the back let it go
                continue
    return copies


def exec_nginx(layer: Layer) -> NoReturn:
    files = NginxFiles.of(layer)
    inherited = inherited_sockets(files)
    for fd in inherited:
        os.set_inheritable(fd, True)
    try:
        os.chdir(files.prefix)  # workers inherit it: how mipart finds them in /proc (nginx.procs)
    except OSError as exc:
        raise UserError(
            f"nginx prefix {files.prefix}: {exc.strerror}; mipart-agent writes it and nginx.conf (is it running?)"
        ) from None
    argv = files.argv()
    try:
        os.execve(argv[0], argv, {**os.environ, **nginx_procs.inherit_env(inherited)})
    except OSError as exc:
        raise UserError(
            f"cannot run nginx {argv[0]}: {exc.strerror}; install nginx (apt-get install nginx-light or nginx)"
        ) from None
