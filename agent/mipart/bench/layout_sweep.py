"""`mipart bench sweep --layouts`: each layout in turn through the operator path, measured by `bench run`, then the
operator's own.

For each layout: a profile override with that layout (bench.override), the agent reloaded
as an operator would (bench.reload), full serving awaited (bench.serving), then the
sweep of `bench run` (bench.run) into `<dir>/<layout>.json`. Whatever happens (a failure,
Ctrl-C, SIGTERM), the override is removed, the agent reloaded on the operator's profile, and
full serving awaited again. Every check that can refuse runs before anything is changed.
"""

from __future__ import annotations

import os
import signal
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from mipart.bench import override
from mipart.bench.layouts import Layout
from mipart.bench.reload import AgentProcess, reload_agent
from mipart.bench.results import Results
from mipart.bench.run import RunRequest, check_output, chosen_services, run_bench
from mipart.bench.serving import Before, ReadStatus, wait_full_serving, waiting_for
from mipart.bench.sweep import Sweep
from mipart.bench.tool import ensure_tool
from mipart.errors import UserError
from mipart.paths import profile_override_path
from mipart.profile import load_profile
from mipart.profile.load import ProfileError
from mipart.profile.schema import Profile


@dataclass(frozen=True)
class AgentLink:
    """The agent a sweep drives: its status API and how it is told to reload."""

    status: ReadStatus
    process: AgentProcess
    run_dir: Path


@dataclass(frozen=True)
class SweepRequest:
    profile: Profile  # the operator's, as the agent runs it
    layouts: tuple[Layout, ...]
    directory: Path
    service: str | None
    sweep: Sweep
    tokenizer: str | None
    progress: bool
    ready_timeout: float


@dataclass(frozen=True)
class Planned:
    layout: Layout
    text: str
    profile: Profile
    output: Path


def check_restorable(profile: Profile) -> None:
    """Restoring is reloading the operator's profile: a profile that leaves the modes as is would leave the last layout
    on the host."""
    unset = [
        name
        for name, value in (("gpus.compute", profile.gpus.compute), ("gpus.memory", profile.gpus.memory))
        if value is None
    ]
    if unset:
        raise UserError(
            f"{profile.source}: {' and '.join(unset)} not set (left as is), so the sweep could not restore this "
            "host's layout "
            "after it; set them in the profile (`mipart partition export` prints the host's) and reload; nothing was "
            "changed"
        )


def check_agent(link: AgentLink, profile: Profile) -> None:
    """The agent runs the operator's profile, at full serving, with no override: else one line, nothing changed."""
    status = link.status()
    path = status.profile.override or override.existing(link.run_dir)
    if path:
        raise UserError(
            f"a profile override is in place ({path}): another sweep runs, or one was killed; "
            f"if none runs, `{override.RESTORE_COMMAND}`; nothing was changed"
        )
    if status.profile.digest != profile.digest:
        raise UserError(
            f"the agent runs a profile other than {profile.source} (digest "
            f"{status.profile.digest[:12] or 'none'}, "
            f"the file's {profile.digest[:12]}): reload it first, or pass --profile; nothing was changed"
        )
    what = waiting_for(status, profile)
    if what:
        raise UserError(
            f"the host is not at full serving (waiting for {what}); let it settle, see `mipart status`; nothing was "
            "changed"
        )
    if not os.access(link.run_dir, os.W_OK):
        raise UserError(
            f"{link.run_dir}: not writable by this user, and the profile override goes there; run as root; nothing "
            "was changed"
        )


def plan_layouts(request: SweepRequest, run_dir: Path) -> list[Planned]:
    """Each layout's override, checked by the profile loader and by the host's partition rules, before anything
    changes."""
    from mipart.gpu import open_backend
    from mipart.partition.apply import plan_host

    backend, planned = open_backend(), []
    for layout in request.layouts:
        text, profile = override.checked_override(request.profile, layout, profile_override_path(run_dir))
        try:
            plan_host(profile.gpus, backend)
        except UserError as exc:
            raise UserError(f"--layouts {layout.word}: this host refuses it: {exc}; nothing was changed") from None
        output = request.directory / layout.file_name
        check_output(output)
        planned.append(Planned(layout, text, profile, output))
    return planned


def switch(link: AgentLink, profile: Profile, services, timeout: float, say, put_text: str | None) -> None:
    """Write (or remove, when put_text is None) the override, reload the agent, and wait for full serving on
    `profile`."""
    before = Before.of(link.status())
    if put_text is None:
        override.remove(link.run_dir)
    else:
        override.put(put_text, link.run_dir)
    say(f"mipart: reloading the agent: {link.process.describe()}")
    reload_agent(link.process)
    wait_full_serving(link.status, profile, before, services, timeout, say)


def restore(link: AgentLink, operator_path: str, services, timeout: float, say) -> None:
    """The operator's profile back in force, at full serving."""
    try:
        operator = load_profile(operator_path)
    except ProfileError as exc:
        raise UserError(
            f"{operator_path} is not a valid profile now ({str(exc).splitlines()[0]}); the override stays; "
            f"fix the profile, then `{override.RESTORE_COMMAND}`"
        ) from None
    say(f"mipart: restoring the operator's profile {operator_path}")
    switch(link, operator, services, timeout, say, put_text=None)
    say(f"mipart: the operator's profile {operator_path} is in force again, at full serving")


def restore_only(link: AgentLink, profile: Profile, timeout: float, say) -> bool:
    """`--restore`: remove a (stale) override and serve the operator's profile; False when there was none."""
    with override.owned(link.run_dir):  # never under a sweep that runs: it restores itself
        if not (override.existing(link.run_dir) or link.status().profile.override):
            return False
        reachable = [
            s for s in profile.services if s.listen.path is None
        ]  # a unix-socket listener is not driven, so not proven
        restore(link, profile.source, reachable, timeout, say)
        return True


@contextmanager
def interruptible():
    """SIGTERM as Ctrl-C, so `kill PID` restores the operator's profile too (SIGKILL cannot: `--restore` then)."""

    def stop(signum, frame):
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, stop)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def run_sweep(request: SweepRequest, link: AgentLink, say) -> list[Results]:
    check_restorable(request.profile)
    with override.owned(link.run_dir):
        return _owned_sweep(request, link, say)


def _owned_sweep(request: SweepRequest, link: AgentLink, say) -> list[Results]:
    check_agent(link, request.profile)
    services = chosen_services(request.profile, request.service)
    made = not request.directory.exists()
    request.directory.mkdir(parents=True, exist_ok=True)
    try:
        planned = plan_layouts(request, link.run_dir)
    except UserError:
        if made:
            request.directory.rmdir()  # a refused sweep leaves nothing behind
        raise
    ensure_tool(say)  # installed (or found) before the host is touched
    runs: list[Results] = []
    with interruptible():
        try:
            for item in planned:
                say(f"mipart: layout {item.layout.word}")
                switch(link, item.profile, services, request.ready_timeout, say, put_text=item.text)
                bench = RunRequest(
                    item.profile,
                    request.service,
                    request.sweep,
                    item.output,
                    item.layout.word,
                    request.tokenizer,
                    request.progress,
                )
                runs.append(run_bench(bench, say))
        except BaseException:
            _restore_after_failure(link, request, services, say)
            raise
        restore(link, request.profile.source, services, request.ready_timeout, say)
    return runs


def _restore_after_failure(link: AgentLink, request: SweepRequest, services, say) -> None:
    """The restore after a failure says its own trouble, and leaves the first failure to be reported."""
    try:
        restore(link, request.profile.source, services, request.ready_timeout, say)
    except (UserError, KeyboardInterrupt) as exc:
        say(
            f"mipart: restoring the operator's profile failed too: {exc or 'interrupted'}; the status shows the "
            "override; "
            f"run `{override.RESTORE_COMMAND}`"
        )
