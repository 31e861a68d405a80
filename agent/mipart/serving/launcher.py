"""`mipart exec N`: the ExecStart of mipart-vllm@N. Reads the spec, then execs the server,
so the unit's main PID is vLLM itself (or the container client, which forwards signals).

As root it first makes the instance's directories (serving.dirs: its socket directory, its
HOME, the model cache), records the launch (runners.records: the spec's digest, by pid and
start time) and, for a native server, becomes the instance's own uid (names.instance_uid)
with instances.user's groups; the server's umask is 0007 (its socket: 0770).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from typing import TYPE_CHECKING

from mipart.errors import UserError
from mipart.gpu import open_backend
from mipart.names import INSTANCE_UID_BASE, INSTANCE_VAR, RUN_DIR_VAR, VISIBLE_DEVICE_VARS, instance_uid
from mipart.paths import instance_spec_path
from mipart.runners import records
from mipart.serving import dirs
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


def _user(name: str) -> pwd.struct_passwd:
    import pwd

    try:
        return pwd.getpwnam(name)
    except KeyError:
        raise UserError(
            f"system user {name!r} does not exist; reinstall mipart (it creates the user) or set instances.user"
        ) from None


@dataclass(frozen=True)
class Identity:
    """Who a server runs as: uid, primary group and groups; `own` when the uid is the instance's alone."""

    uid: int
    gid: int
    groups: tuple[int, ...]
    name: str
    own: bool


def identity(spec: InstanceSpec) -> Identity:
    """instances.user's groups, with a uid of the instance's own (names.instance_uid) unless that user is root."""
    entry = _user(spec.user or "root")
    groups = tuple(os.getgrouplist(entry.pw_name, entry.pw_gid))
    if entry.pw_uid == 0:
        return Identity(0, entry.pw_gid, groups, entry.pw_name, False)
    import pwd

    uid = instance_uid(spec.number)
    try:
        taken = pwd.getpwuid(uid).pw_name
    except KeyError:
        return Identity(uid, entry.pw_gid, groups, f"mipart-vllm-{spec.number}", True)
    raise UserError(
        f"instance {spec.number}: uid {uid} (mipart runs instance N as {INSTANCE_UID_BASE} + N) belongs to user "
        f"{taken!r}; give that user another uid"
    )


def _drop_privileges(who: Identity, env: dict[str, str], home: str | None) -> None:
    """Become the instance's user before the server's env is ever used (execve comes after)."""
    os.setgroups(list(who.groups))
    os.setgid(who.gid)
    os.setuid(who.uid)
    if home is not None:
        env["HOME"] = home
    else:
        import pwd

        env["HOME"] = pwd.getpwuid(who.uid).pw_dir
    env["USER"] = env["LOGNAME"] = who.name


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
    run_dir = instance_spec_path(number).parent.parent
    tags = {INSTANCE_VAR: str(number), RUN_DIR_VAR: str(run_dir)}
    if cleanup:
        if spec.container:
            remove_container(container_client(spec), spec, client_env(tags))
        return 0
    who = identity(spec) if os.geteuid() == 0 and not spec.container else None
    uid = who.uid if who else os.geteuid()  # a container's server is root (in its container)
    # First, so the agent never sees this server without it (it restarts one it cannot vouch for);
    # root's record: the server cannot change it. This process execs the server: same pid.
    records.write_launch(number, spec.digest(), uid)
    secrets = read_env_files(spec)  # checked before anything starts; for a container, its client reads them
    owner = _user(spec.cache_owner or spec.user or "root")
    cache = dirs.prepare_cache(spec, owner.pw_uid, owner.pw_gid)
    dirs.prepare_socket_dir(spec, uid)
    if spec.container:
        program, env = container_client(spec), client_env(tags)
        argv = client_argv(spec, checked_env_file(spec), cache)
        remove_container(program, spec, env)  # a stale container of the same name would block `run --name`
    else:
        home = dirs.prepare_home(number, uid, who.gid) if who and who.own else None
        # A visible-devices variable inherited from the unit (/etc/default/mipart) would pick GPUs
        # beside the one the spec sets; only the spec's choice reaches the server.
        inherited = {k: v for k, v in os.environ.items() if k not in VISIBLE_DEVICE_VARS}
        env = {**inherited, **dict(spec.env), **secrets, **tags}
        backend = open_backend()
        env.update(backend.device_env(spec.devices))  # what the host's backend needs; amdgpu: nothing
        if who is not None:
            _drop_privileges(who, env, home)
        os.umask(dirs.SERVER_UMASK)
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
