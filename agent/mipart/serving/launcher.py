"""`mipart exec N`: the ExecStart of mipart-vllm@N. Reads the spec, then execs the server,
so the unit's main PID is vLLM itself (or the container client, which forwards signals).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from typing import TYPE_CHECKING

from mipart.cachedir import cache_dir_problem
from mipart.errors import UserError
from mipart.gpu import open_backend
from mipart.names import DIGEST_VAR, INSTANCE_VAR, RUN_DIR_VAR, VISIBLE_DEVICE_VARS
from mipart.paths import instance_spec_path
from mipart.serving.execenv import CLIENT_PATH, checked_env_file, client_argv, client_env, read_env_files
from mipart.serving.spec import InstanceSpec, SpecVersionError
from mipart.serving.visible import visible_value

if TYPE_CHECKING:
    import pwd


def read_spec(number: int) -> InstanceSpec:
    path = instance_spec_path(number)
    try:
        return InstanceSpec.from_file_text(path.read_text())
    except SpecVersionError as exc:
        raise UserError(f"instance {number}: spec {path} has {exc}; restart mipart-agent to rewrite it") from None
    except FileNotFoundError:
        raise UserError(
            f"instance {number}: no spec at {path}; mipart-agent writes it (is it running? `systemctl status "
            "mipart-agent`), and only for instances the profile asks for"
        ) from None
    except (ValueError, TypeError, KeyError) as exc:
        raise UserError(
            f"instance {number}: spec {path} is unreadable ({exc}); restart mipart-agent to rewrite it"
        ) from None


def container_name(number: int) -> str:
    return f"mipart-vllm-{number}"


def container_client(spec: InstanceSpec) -> str:
    """docker or podman, found on the fixed PATH only (never the profile's, nor the unit's)."""
    client = shutil.which(spec.runtime, path=CLIENT_PATH)
    if client is None:
        raise UserError(
            f"instance {spec.number}: {spec.runtime} not found in {CLIENT_PATH} (the container client's fixed PATH); "
            "install it there"
        )
    return client


def remove_container(client: str, spec: InstanceSpec, env: dict[str, str]) -> None:
    subprocess.run([client, "rm", "-f", container_name(spec.number)], capture_output=True, timeout=120, env=env)


def prepare_cache(spec: InstanceSpec) -> None:
    """hf_home, its links followed, must still be a directory of its own; one we create is the instance user's."""
    real = os.path.realpath(spec.hf_home)
    problem = cache_dir_problem(real)
    if problem:
        raise UserError(f"instance {spec.number}: instances.hf_home {spec.hf_home} resolves to {real}, which {problem}")
    owner = spec.cache_owner or spec.user
    if owner and os.geteuid() == 0 and not os.path.isdir(real):
        entry = _user(owner)
        os.makedirs(real, exist_ok=True)
        os.chown(real, entry.pw_uid, entry.pw_gid)


def _user(name: str) -> pwd.struct_passwd:
    import pwd

    try:
        return pwd.getpwnam(name)
    except KeyError:
        raise UserError(
            f"system user {name!r} does not exist; reinstall mipart (it creates the user) or set instances.user"
        ) from None


def _drop_privileges(user: str, env: dict[str, str]) -> None:
    """Become the instance user before the server's env is ever used (execve comes after)."""
    entry = _user(user)
    os.setgroups(os.getgrouplist(user, entry.pw_gid))
    os.setgid(entry.pw_gid)
    os.setuid(entry.pw_uid)
    env["HOME"] = entry.pw_dir
    env["USER"] = env["LOGNAME"] = user


def resolve_visible(spec: InstanceSpec, enumerated: tuple[str, ...]) -> str:
    """The server's visible-devices value (serving/visible.py), said once in its unit's log."""
    value = visible_value(spec.number, spec.render_nodes, enumerated)
    print(
        f"mipart: instance {spec.number}: {spec.visible_devices_env}={value} ({', '.join(spec.render_nodes)} among "
        f"the {len(enumerated)} GPUs ROCm enumerates here)",
        file=sys.stderr,
        flush=True,
    )
    return value


def launch(number: int, cleanup: bool) -> int:
    """Exec the server for instance NUMBER (or, with cleanup, remove its container)."""
    spec = read_spec(number)
    tags = {
        INSTANCE_VAR: str(number),
        DIGEST_VAR: spec.digest(),
        RUN_DIR_VAR: str(instance_spec_path(number).parent.parent),
    }
    if cleanup:
        if spec.container:
            remove_container(container_client(spec), spec, client_env(tags))
        return 0
    secrets = read_env_files(spec)  # checked before anything starts; for a container, its client reads them
    prepare_cache(spec)
    if spec.container:
        program, env, argv = container_client(spec), client_env(tags), client_argv(spec, checked_env_file(spec))
        remove_container(program, spec, env)  # a stale container of the same name would block `run --name`
    else:
        # A visible-devices variable inherited from the unit (/etc/default/mipart) would pick GPUs
        # beside the one the spec sets; only the spec's choice reaches the server.
        inherited = {k: v for k, v in os.environ.items() if k not in VISIBLE_DEVICE_VARS}
        env = {**inherited, **dict(spec.env), **secrets, **tags}
        backend = open_backend()
        env.update(backend.device_env(spec.devices))  # what the host's backend needs; amdgpu: nothing
        if spec.user and os.geteuid() == 0:
            _drop_privileges(spec.user, env)
        argv = list(spec.argv)
        found = shutil.which(argv[0], path=os.environ.get("PATH", os.defpath))  # mipart's PATH, not the profile's
        if found is None:
            raise UserError(
                f"instance {number}: command {argv[0]!r} not found; install it, or set services.{spec.service}.command"
            )
        program = found
        if spec.visible_devices_env:  # as the server's user, in its cgroup: what ROCm will enumerate
            env[spec.visible_devices_env] = resolve_visible(spec, backend.rocm_devices(env))
    try:
        os.execve(program, argv, env)
    except PermissionError:
        raise UserError(
            f"instance {number}: cannot execute {program!r} (permission denied); check the file mode"
        ) from None
