"""The profile override a layout sweep runs with: the operator's profile with another `gpus:` layout.

The operator's profile is never edited. The override lives under the agent's run dir
(paths.profile_override_path), which the agent reads before its --profile when present
(daemon.profiles), and which its status names. It is checked by the loader the agent uses,
and it must mean the operator's profile in every field but the layout, or it is not written.
"""

from __future__ import annotations

import fcntl
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path

from mipart.bench.layouts import Layout
from mipart.errors import UserError
from mipart.fsutil import write_atomic
from mipart.paths import profile_override_path, sweep_lock_path
from mipart.profile.load import ProfileError, check_profile, read_profile_text
from mipart.profile.schema import Profile

RESTORE_COMMAND = "mipart bench sweep --restore"
# The operator's profile is 0640 because it may hold a token in `env`; its rewrite is root's alone
# (issue 20: written 0644, any user read HF_TOKEN from it). The lock holds a pid: root's alone too.
OVERRIDE_MODE = 0o600


def override_text(operator: Profile, layout: Layout) -> str:
    """The operator's profile as YAML with every selected GPU in `layout` (gpus.overrides dropped: the layout is the
    host's)."""
    import yaml

    data = yaml.safe_load(read_profile_text(operator.source))
    gpus = data.get("gpus") or {}
    data["gpus"] = {**gpus, "compute": layout.compute, "memory": layout.memory, "overrides": []}
    header = (
        f"# profile override written by `mipart bench sweep` (PID {os.getpid()}) from {operator.source}: layout "
        f"{layout.word}.\n"
        f"# The agent reads this file instead of {operator.source} while it exists; `{RESTORE_COMMAND}` removes it.\n"
    )
    return header + yaml.safe_dump(data, sort_keys=False)


def checked_override(operator: Profile, layout: Layout, path: Path) -> tuple[str, Profile]:
    """(text, profile) of the override, validated as the agent will read it; UserError when it would change more than
    the layout."""
    text = override_text(operator, layout)
    try:
        profile = check_profile(text, str(path))
    except ProfileError as exc:
        raise UserError(
            f"--layouts {layout.word}: the profile with this layout is refused: {str(exc).splitlines()[0]}"
        ) from None
    want = replace(operator, gpus=replace(operator.gpus, compute=layout.compute, memory=layout.memory, overrides=()))
    if replace(profile, source="", digest="") != replace(want, source="", digest=""):
        raise UserError(
            f"{operator.source}: rewritten with layout {layout.word} it would mean something else besides the layout; "
            "nothing was changed (please report this with the profile)"
        )
    return text, profile


@contextmanager
def owned(run_dir: Path | None = None) -> Iterator[None]:
    """One sweep (or --restore) at a time per agent: the override has a single owner, who restores it.

    An flock on <run dir>/bench-sweep.lock, holding the owner's PID for the refusal's line; the
    kernel drops it when the owner dies, however it dies, so a stale lock never blocks.
    """
    path = sweep_lock_path(run_dir)
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, OVERRIDE_MODE)
    except OSError as exc:
        raise UserError(
            f"{path}: cannot open the sweep lock: {exc.strerror}; run as the agent's user (root); nothing was changed"
        ) from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            owner = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            raise UserError(
                f"another `mipart bench sweep` runs on this agent (PID {owner}); wait for it, or stop it with Ctrl-C "
                f"or `kill {owner}` (it restores the operator's profile); nothing was changed"
            ) from None
        os.fchmod(fd, OVERRIDE_MODE)  # one an older mipart made 0644
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield
    finally:
        os.close(fd)


def existing(run_dir: Path | None = None) -> Path | None:
    path = profile_override_path(run_dir)
    return path if path.exists() else None


def put(text: str, run_dir: Path | None = None) -> Path:
    path = profile_override_path(run_dir)
    try:
        write_atomic(path, text, mode=OVERRIDE_MODE)
    except OSError as exc:
        raise UserError(
            f"{path}: cannot write the profile override: {exc.strerror}; run as the agent's user (root)"
        ) from None
    return path


def remove(run_dir: Path | None = None) -> bool:
    """True when there was one to remove."""
    try:
        profile_override_path(run_dir).unlink()
    except FileNotFoundError:
        return False
    return True
