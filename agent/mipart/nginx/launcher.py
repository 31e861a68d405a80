"""`mipart exec-nginx`: the ExecStart of mipart-nginx.service. It takes over the listening
sockets of workers a killed master left (strays), tells them to finish their streams and
quit, and execs nginx with the sockets, so the unit's main process is nginx itself.

Why: a SIGKILLed master's workers keep serving a frozen config and hold the port, and a new
master cannot bind it. With the unit's KillMode=process they outlive the master; this hands
their sockets to the next one, as the process runner does (docs/faults.md), so neither a
stream in flight nor a waiting connection is lost.
"""

from __future__ import annotations

import os
from typing import NoReturn

from mipart.errors import UserError
from mipart.nginx import procs as nginx_procs
from mipart.nginx.files import NginxFiles
from mipart.paths import nginx_prefix


def exec_nginx() -> NoReturn:
    files = NginxFiles(nginx_prefix())
    strays = nginx_procs.scan(files.prefix).strays
    inherited = nginx_procs.take_over(strays)
    for fd in inherited:
        os.set_inheritable(fd, True)
    nginx_procs.quit_gracefully(strays)  # they close their copies at once; the sockets live on in ours
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
