"""The runner seam: who starts, stops and lists the servers, and runs nginx.

The agent asks for what should change and never owns the servers: a runner's
instances and nginx keep serving when the agent restarts. A runner is built with the
run directory (`Runner(run_dir)`, by mipart.runners.make_runner); its calls block, so
the agent makes them from worker threads.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from mipart.nginx.files import NginxFiles
from mipart.values import UnitState


@runtime_checkable
class Runner(Protocol):
    def list_instances(self) -> dict[int, UnitState]:
        """Every instance the runner knows of, running or not, by instance number."""
        ...

    def start(self, number: int) -> None: ...

    def stop(self, number: int) -> None: ...

    def restart(self, number: int) -> None: ...

    def last_exit(self, number: int) -> str:
        """Why instance NUMBER's server last ended ("exited with status 1 (exit-code); <its last
        log line>"), for LAST ERROR; "" when nothing is known. Read once per death."""
        ...

    def ensure_nginx(self, files: NginxFiles) -> None:
        """Start the nginx of `files.layer` (the back or the front) on `files`, or make a running
        one re-read its config; nginx workers of ours left without their master (nginx.procs
        strays) must not keep the port."""
        ...

    def replace_nginx(self, files: NginxFiles) -> None:
        """A new master for `files.layer` that binds its listeners afresh: one of its unix sockets lost
        its file (deleted with the run dir), which no reload can bind again. The old master is killed,
        so it deletes no file on its way out; its workers finish what they carry (nginx.procs strays)."""
        ...

    def nginx_running(self, files: NginxFiles) -> bool:
        """Whether the nginx of `files.layer` runs."""
        ...

    def shutdown(self, nginx: tuple[NginxFiles, ...]) -> None:
        """Stop every instance and each nginx layer in `nginx` this runner serves (`mipart agent
        --stop-on-exit`, the demo's Ctrl-C). A runner whose servers outlive the agent by design
        (systemd's) refuses with UserError."""
        ...
