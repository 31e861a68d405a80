"""The agent's profile: read and checked at start and on SIGHUP; a bad one never replaces a good one.

On SIGHUP the file is read in a worker thread, within LOAD_TIMEOUT, so the event loop keeps
probing and answering the API meanwhile; whatever goes wrong (a problem in the file, a
file that cannot be read, a bug in validation itself, a read that takes too long) comes
back as the one line shown as profile_error, and the agent keeps the profile it runs.

When `mipart bench sweep` has put a profile override under the run dir, that file is read
instead of the operator's profile (which it never edits), through the same loader; the status
names it (profile.override) so nobody mistakes it for the operator's profile (docs/bench.md).
"""

from __future__ import annotations

import asyncio
import os
import traceback
from pathlib import Path

from mipart.log import Log
from mipart.paths import profile_override_path
from mipart.profile import load_profile
from mipart.profile.problems import ProfileError
from mipart.profile.schema import Profile

# A profile is at most 1 MiB (profile.source): it validates in well under a second.
LOAD_TIMEOUT = 10.0


def profile_to_read(path: str, run_dir: Path | None) -> str:
    """The sweep's override under `run_dir` when it is there, else `path` (None: no run dir, no override)."""
    override = profile_override_path(run_dir) if run_dir is not None else None
    return str(override) if override is not None and override.exists() else path


def override_in_force(profile: Profile, run_dir: Path) -> str:
    """The override's path when `profile` was read from it, else ""."""
    override = os.path.abspath(profile_override_path(run_dir))
    return override if profile.source == override else ""


def read_profile(path: str, log: Log, kept_digest: str, run_dir: Path | None = None) -> tuple[Profile | None, str]:
    """(profile, "") when valid; else (None, its first problem), every problem logged."""
    kept = kept_digest[:12] or "none"
    operator, path = path, profile_to_read(path, run_dir)
    if path != operator:
        log.warning("profile.override", override=path, instead_of=operator, by="mipart bench sweep")
    try:
        profile = load_profile(path)
    except ProfileError as exc:
        lines = str(exc).splitlines()
        for line in lines:
            log.error("profile.invalid", problem=line, kept=kept)
        return None, lines[0]
    except Exception as exc:  # noqa: BLE001 - a bug in validation must not take serving down
        where = traceback.extract_tb(exc.__traceback__)[-1]
        line = (
            f"{path}: the profile could not be checked ({exc.__class__.__name__}: {exc}); "
            "the last good profile is kept; please report this with the file"
        )
        log.error("profile.check_failed", problem=line, at=f"{where.filename}:{where.lineno}", kept=kept)
        return None, line
    return profile, ""


async def read_profile_off_loop(
    path: str, log: Log, kept_digest: str, timeout: float = LOAD_TIMEOUT, run_dir: Path | None = None
) -> tuple[Profile | None, str]:
    """read_profile in a worker thread, given up on after `timeout` seconds (its answer is then dropped)."""
    try:
        return await asyncio.wait_for(asyncio.to_thread(read_profile, path, log, kept_digest, run_dir), timeout)
    except asyncio.TimeoutError:
        line = f"{path}: reading the profile took longer than {timeout:g}s; the last good profile is kept"
        log.error("profile.invalid", problem=line, kept=kept_digest[:12] or "none")
        return None, line
