"""What each server's process gets as its environment, and where a secret may come from.

The profile's env never reaches a process that runs with root's privileges on the host:
- a container client (docker, podman: root) runs with CLIENT_PATH, HOME and mipart's tags
  only; the instance's env reaches the container through the env file mipart-agent wrote
  beside the spec (root's alone), and each `env_files:` file is one more `--env-file`;
- a native server gets the env in its environment at execve(2), after the launcher has
  become the instance user, and its command is looked up on the launcher's own PATH.
See docs/security.md.
"""

from __future__ import annotations

import os
import stat

from mipart import envfile
from mipart.errors import UserError
from mipart.names import CACHE_VAR, RESERVED_ENV_PREFIX, VISIBLE_DEVICE_VARS
from mipart.paths import instance_env_path
from mipart.serving.spec import CONTAINER_HF_HOME, InstanceSpec

CLIENT_PATH = "/usr/sbin:/usr/bin:/sbin:/bin"  # root-owned directories only


def client_env(tags: dict[str, str]) -> dict[str, str]:
    """The container client's whole environment: nothing from the profile or the unit."""
    import pwd

    return {"PATH": CLIENT_PATH, "HOME": pwd.getpwuid(os.geteuid()).pw_dir, **tags}


def client_argv(spec: InstanceSpec, env_path: str, cache: str) -> list[str]:
    """`docker|podman run --env-file ... -v CACHE:...`: the spec's command with its env files and the model
    cache put in, the cache as the path the launcher resolved and checked (a link swapped in later moves nothing)."""
    files = [env_path, *spec.env_files]
    inserted = [*(part for path in files for part in ("--env-file", path)), "-v", f"{cache}:{CONTAINER_HF_HOME}"]
    return [*spec.argv[:2], *inserted, *spec.argv[2:]]


def checked_env_file(spec: InstanceSpec) -> str:
    """The env file mipart-agent wrote beside the spec (the launcher only reads it: its unit's
    file system is read-only); refused unless it is root's alone and says what the spec says."""
    path = instance_env_path(spec.number)
    where = f"instance {spec.number}: env file {path}"
    try:
        info, text = os.stat(path), path.read_text()
    except OSError as exc:
        raise UserError(f"{where} cannot be read ({exc.strerror}); restart mipart-agent to rewrite it") from None
    if info.st_uid not in (0, os.geteuid()) or info.st_mode & 0o077:
        raise UserError(
            f"{where} has mode {stat.S_IMODE(info.st_mode):04o} and owner uid {info.st_uid}; it must be root's alone: "
            "restart mipart-agent to rewrite it"
        )
    try:
        matches = text == spec.env_file_text()
    except envfile.EnvFileError as exc:
        raise UserError(
            f"instance {spec.number}: services.{spec.service}.env: {exc}; fix the profile (`mipart validate`)"
        ) from None
    if not matches:
        raise UserError(
            f"{where} does not say what spec {path.with_suffix('.json')} says; restart mipart-agent to rewrite both"
        )
    return str(path)


def read_env_files(spec: InstanceSpec) -> dict[str, str]:
    """The secrets of `env_files:`, each file checked: owned by root (or by us), no one else may read or write it."""
    found: dict[str, str] = {}
    given = dict(spec.env)
    for path in spec.env_files:
        for key, value in _read_env_file(spec, path):
            where = f"instance {spec.number}: {path}"
            if key in VISIBLE_DEVICE_VARS or key == CACHE_VAR or key.startswith(RESERVED_ENV_PREFIX):
                raise UserError(f"{where} sets {key}, which mipart sets for each instance; remove it")
            if key in given or key in found:
                raise UserError(
                    f"{where} sets {key}, which services.{spec.service}.env or another env file sets too; set it in "
                    "one place"
                )
            found[key] = value
    return found


def _read_env_file(spec: InstanceSpec, path: str) -> tuple[tuple[str, str], ...]:
    where = f"instance {spec.number}: services.{spec.service}.env_files {path}"
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        raise UserError(
            f"{where} does not exist; create it (owner root, mode 0600) or remove it from the profile"
        ) from None
    except OSError as exc:
        raise UserError(
            f"{where} cannot be opened ({exc.strerror}); it must be a regular file, not a symbolic link, owned by "
            "root, mode 0600"
        ) from None
    with os.fdopen(fd, "rb") as handle:
        info = os.fstat(handle.fileno())
        if not stat.S_ISREG(info.st_mode):
            raise UserError(f"{where} is not a regular file; give a file (owner root, mode 0600)")
        if info.st_uid not in (0, os.geteuid()):
            raise UserError(f"{where} is owned by uid {info.st_uid}; a secrets file must be root's: chown root: {path}")
        if info.st_mode & 0o077:
            raise UserError(
                f"{where} has mode {stat.S_IMODE(info.st_mode):04o}, so others may read or change it; chmod 600 {path}"
            )
        data = handle.read(1 << 20)
    try:
        return envfile.parse(data.decode("utf-8"))
    except UnicodeDecodeError:
        raise UserError(f"{where} is not UTF-8 text; write KEY=VALUE lines") from None
    except envfile.EnvFileError as exc:
        raise UserError(f"{where} {exc}") from None
