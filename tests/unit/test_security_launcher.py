"""What the launcher (`mipart exec N`, as root) gives an instance, and what it refuses (issue 20).

A native server of a non-root instances.user runs as a uid of its own, 70000 + N, with that
user's groups, a HOME of its own (0700) and umask 0007, listening in a socket directory only it
and nginx's workers may enter. The model cache is walked through descriptors from a root-owned
parent: a cache whose parent another user may write is refused before anything is made or
chowned there, so swapping a link in under the launcher changes no owner.
"""

from __future__ import annotations

import grp
import json
import os
import pwd
import shutil
import stat
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from conftest import create_sim, mipart
from rendered import render_run_dir

from mipart.errors import UserError
from mipart.names import RUN_DIR_VAR, STATE_DIR_VAR, instance_uid
from mipart.profile.schema import MAX_INSTANCES
from mipart.serving import launcher

NOBODY = pwd.getpwnam("nobody")
SHOW = 'id -u; id -g; id -G; umask; echo "$HOME"; stat -c %u:%g:%a "$HOME"'
# As the instance's user: swap the cache for a link to the target whenever the launcher has made it.
SWAP = """
import os, sys, time
cache, target, until = sys.argv[1], sys.argv[2], time.monotonic() + float(sys.argv[3])
while time.monotonic() < until:
    try:
        if os.path.isdir(cache) and not os.path.islink(cache):
            os.rmdir(cache)
            os.symlink(target, cache)
        elif os.path.islink(cache):
            os.unlink(cache)
    except OSError:
        pass
"""


@pytest.fixture
def open_dir():
    """A directory under /tmp that any user may enter (a test's own tmp_path is root's alone)."""
    path = Path(tempfile.mkdtemp(prefix="mipart-test-"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def test_a_native_server_runs_as_a_uid_of_its_own_with_the_users_groups_and_a_home_of_its_own(tmp_path, open_dir):
    # The launcher finds the GPUs ROCm sees as the server's uid: it reads the host's sysfs, which any user may.
    sim_env = create_sim(open_dir / "host", model="mi300x", gpus=8, compute="DPX", memory="NPS2").env
    run = render_run_dir(
        tmp_path,
        sim_env,
        f'partitions: [9], command: ["/bin/sh", "-c", {json.dumps(SHOW)}]',
        instances=f'{{user: nobody, hf_home: "{open_dir / "hf"}"}}',
    )
    state = open_dir / "state"
    for _ in range(2):  # the second start finds its directories the first left, the instance's
        done = mipart("exec", "9", env={**sim_env, RUN_DIR_VAR: str(run), STATE_DIR_VAR: str(state)})
        assert done.returncode == 0, done.stderr
    uid, gid, groups, umask, home, home_stat = done.stdout.split("\n")[:6]
    assert (int(uid), int(gid), groups.split()) == (70009, NOBODY.pw_gid, [str(NOBODY.pw_gid)])
    assert umask == "0007" and home == str(state / "home/9")
    assert home_stat == f"70009:{NOBODY.pw_gid}:700"
    sockets = (Path(sim_env["MIPART_SERVING_DIR"]) / "sockets/9").stat()  # nobody else may even enter it
    assert (sockets.st_uid, sockets.st_gid) == (70009, grp.getgrnam("www-data").gr_gid)
    assert stat.S_IMODE(sockets.st_mode) == 0o750
    acl = os.getxattr(Path(sim_env["MIPART_SERVING_DIR"]) / "sockets/9", "system.posix_acl_default")
    www = grp.getgrnam("www-data").gr_gid  # what the server makes in it, its socket, nginx's workers may use
    assert struct.pack("<HHI", 0x08, 7, www) in acl
    assert json.loads((Path(sim_env["MIPART_SERVING_DIR"]) / "launched/9.json").read_text())["uid"] == 70009
    cache = (open_dir / "hf").stat()
    assert (cache.st_uid, cache.st_gid, stat.S_IMODE(cache.st_mode)) == (NOBODY.pw_uid, NOBODY.pw_gid, 0o770)


def test_a_uid_that_passwd_gives_to_someone_is_refused(monkeypatch):
    from specs import SPEC

    taken = pwd.struct_passwd(("backup2", "x", 70003, 34, "", "/", "/bin/sh"))
    monkeypatch.setattr(pwd, "getpwuid", lambda uid: taken if uid == 70003 else pwd.getpwuid(uid))
    monkeypatch.setattr(launcher, "_user", lambda name: NOBODY)
    with pytest.raises(UserError) as caught:
        launcher.identity(SPEC)
    assert str(caught.value) == (
        "instance 3: uid 70003 (mipart runs instance N as 70000 + N) belongs to user 'backup2'; give that user another uid"
    )


def test_a_host_tree_the_servers_uid_may_not_read_is_one_line(tmp_path, sim_env, open_dir):
    """The GPUs ROCm sees are read as the server's uid; a sysfs root only root may enter (sim_env's, in a
    tmp_path of root's own) is refused in one line that names the file, never a traceback."""
    instances = f'{{user: nobody, hf_home: "{open_dir / "hf"}"}}'
    run = render_run_dir(tmp_path, sim_env, 'partitions: [9], command: ["/bin/true"]', instances=instances)
    done = mipart("exec", "9", env={**sim_env, RUN_DIR_VAR: str(run), STATE_DIR_VAR: str(open_dir / "state")})
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert done.stderr.splitlines() == [
        f"mipart: {sim_env['MIPART_SYSFS_ROOT']}/class/kfd/kfd/topology/generation_id: cannot read: Permission denied"
    ]


def test_every_instance_number_has_a_uid_in_the_range_security_md_names():
    """N is a slot, 8 x GPU + partition, below 72 (9 partitionable GPUs): uids 70000-70071, within what
    systemd leaves unused (65536-524287) and below the subordinate ids useradd hands out (100000)."""
    uids = [instance_uid(n) for n in range(MAX_INSTANCES)]
    assert (uids[0], uids[-1]) == (70000, 70071)
    assert uids[0] >= 65536 and uids[-1] < 100000


def test_a_cache_swapped_for_a_link_under_the_launcher_changes_no_owner(tmp_path, sim_env, open_dir):
    """The instance's user owns the cache's parent and swaps a link to a root-owned directory in while
    the launcher runs, again and again (issue 20, finding 3: a root directory became the attacker's)."""
    shared, target = open_dir / "shared", open_dir / "target"
    shared.mkdir()
    os.chown(shared, NOBODY.pw_uid, NOBODY.pw_gid)
    target.mkdir()
    cache = shared / "cache"
    run = render_run_dir(
        tmp_path, sim_env, 'partitions: [0], command: ["/bin/true"]', instances=f'{{user: nobody, hf_home: "{cache}"}}'
    )
    drop = ["setpriv", f"--reuid={NOBODY.pw_uid}", f"--regid={NOBODY.pw_gid}", "--clear-groups"]
    attacker = subprocess.Popen([*drop, sys.executable, "-c", SWAP, str(cache), str(target), "30"])
    try:
        for _ in range(20):
            done = mipart("exec", "0", env={**sim_env, RUN_DIR_VAR: str(run), STATE_DIR_VAR: str(open_dir / "state")})
            assert target.stat().st_uid == 0
            time.sleep(0.05)
    finally:
        attacker.kill()
        attacker.wait()
    assert (target.stat().st_uid, target.stat().st_gid) == (0, 0)
    assert done.returncode == 1 and done.stderr.startswith(
        f"mipart: instance 0: instances.hf_home {cache}: {shared} is owned by uid {NOBODY.pw_uid} with mode 0755; "
        "it must be root's and writable by root alone"
    )
