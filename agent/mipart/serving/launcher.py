"""`mipart exec N`: the ExecStart of mipart-vllm@N. Reads the spec, then execs the server,
so the unit's main PID is vLLM itself (or the container client, which forwards signals).
"""

from __future__ import annotations

import os
import subprocess

from mipart.errors import UserError
from mipart.gpu import sysfs_root
from mipart.names import DIGEST_VAR, INSTANCE_VAR, RUN_DIR_VAR
from mipart.paths import instance_spec_path
from mipart.serving.spec import InstanceSpec, SpecVersionError
from mipart.sim.devices import device_env


def read_spec(number: int) -> InstanceSpec:
    path = instance_spec_path(number)
    try:
        return InstanceSpec.from_file_text(path.read_text())
    except SpecVersionError as exc:
        raise UserError(f"instance {number}: spec {path} has {exc}; restart mipart-agent to rewrite it")
    except FileNotFoundError:
        raise UserError(f"instance {number}: no spec at {path}; mipart-agent writes it (is it running? `systemctl status mipart-agent`), and only for instances the profile asks for")
    except (ValueError, TypeError, KeyError) as exc:
        raise UserError(f"instance {number}: spec {path} is unreadable ({exc}); restart mipart-agent to rewrite it")


def container_name(number: int) -> str:
    return f"mipart-vllm-{number}"


def remove_container(spec: InstanceSpec) -> None:
    subprocess.run([spec.runtime, "rm", "-f", container_name(spec.number)], capture_output=True, timeout=120)


def _drop_privileges(user: str, env: dict, hf_home: str) -> None:
    """Become the instance user; a model cache we create must be theirs to write."""
    import pwd

    try:
        entry = pwd.getpwnam(user)
    except KeyError:
        raise UserError(f"system user {user!r} does not exist; reinstall mipart (it creates the user) or set instances.user")
    if not os.path.isdir(hf_home):
        os.makedirs(hf_home, exist_ok=True)
        os.chown(hf_home, entry.pw_uid, entry.pw_gid)
    os.setgroups(os.getgrouplist(user, entry.pw_gid))
    os.setgid(entry.pw_gid)
    os.setuid(entry.pw_uid)
    env["HOME"] = entry.pw_dir
    env["USER"] = env["LOGNAME"] = user


def launch(number: int, cleanup: bool) -> int:
    """Exec the server for instance NUMBER (or, with cleanup, remove its container)."""
    spec = read_spec(number)
    container = spec.runtime in ("docker", "podman")
    if cleanup:
        if container:
            remove_container(spec)
        return 0
    env = {**os.environ, **dict(spec.env), INSTANCE_VAR: str(number), DIGEST_VAR: spec.digest()}
    env.setdefault(RUN_DIR_VAR, str(instance_spec_path(number).parent.parent))
    if container:
        remove_container(spec)  # a stale container of the same name would block `run --name`
    else:
        env.update(device_env(sysfs_root(), spec.devices))  # a simulated host's device files; on a real host none
        if spec.user and os.geteuid() == 0:
            _drop_privileges(spec.user, env, spec.hf_home)
    try:
        os.execvpe(spec.argv[0], list(spec.argv), env)
    except FileNotFoundError:
        raise UserError(f"instance {number}: command {spec.argv[0]!r} not found; install it, or set services.{spec.service}.command")
    except PermissionError:
        raise UserError(f"instance {number}: cannot execute {spec.argv[0]!r} (permission denied); check the file mode")
