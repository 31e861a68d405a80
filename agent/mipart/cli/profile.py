"""`mipart validate`: check a profile without touching the host."""

from __future__ import annotations

import json

import click

from mipart.errors import UserError
from mipart.names import DEFAULT_PROFILE


@click.command()
@click.argument("path", required=False)
@click.option("--profile", "profile_path", default=None, help=f"Profile to check (default {DEFAULT_PROFILE}).")
@click.option("-q", "--quiet", is_flag=True, help="Print nothing when the profile is valid.")
@click.option(
    "--json",
    "as_json",
    is_flag=True,
    help="When valid, print its path, digest (the one /v1/status reports once loaded) and services as JSON.",
)
def validate(path: str | None, profile_path: str | None, quiet: bool, as_json: bool) -> int:
    """Check a profile; print every problem as PATH:LINE:COL: what; what is right."""
    from mipart.profile import load_profile
    from mipart.profile.problems import Problem, ProfileError

    if path and profile_path and path != profile_path:
        raise click.UsageError("give the profile either as PATH or as --profile, not both")
    target = path or profile_path or DEFAULT_PROFILE
    try:
        profile = load_profile(target)
    except UserError:
        raise
    except Exception as exc:  # noqa: BLE001 - a bug in validation: still one line, never a traceback
        reason = f"the profile could not be checked ({exc.__class__.__name__}: {exc}); please report this with the file"
        raise ProfileError(target, [Problem(0, 0, reason)]) from None
    if as_json:
        services = [s.name for s in profile.services]
        click.echo(json.dumps({"path": target, "digest": profile.digest, "services": services}, indent=2))
    elif not quiet:
        click.echo(f"{target}: valid ({len(profile.services)} services)")
    return 0
