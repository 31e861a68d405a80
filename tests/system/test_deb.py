"""The .deb on a real systemd: live install, image bake, purge, simulated host."""

from __future__ import annotations

import os
import re
import shutil
import subprocess

import pytest

from .nspawn import REPO, Machine, create_sim_host, install_deb

pytestmark = pytest.mark.system


def units_to_enable() -> list[str]:
    """Same rule as dh_installsystemd: non-template units with an [Install] section."""
    return sorted(
        p.name
        for p in (REPO / "units").glob("*")
        if p.is_file() and "@." not in p.name and re.search(r"^\[Install\]", p.read_text(), re.M)
    )


def enabled_state(m: Machine, unit: str) -> str:
    return m.run(f"systemctl is-enabled {unit}", check=False).stdout.strip()


def test_lintian(deb):
    if not shutil.which("lintian"):
        subprocess.run(
            ["apt-get", "install", "-y", "-q", "lintian"],
            check=True,
            capture_output=True,
            env=dict(os.environ, DEBIAN_FRONTEND="noninteractive"),
        )
    p = subprocess.run(
        ["lintian", "--allow-root", "--fail-on", "error,warning", str(deb)], capture_output=True, text=True
    )
    assert p.returncode == 0, p.stdout + p.stderr
    # Each override has its reason beside it (debian/mipart.lintian-overrides).
    assert not [line for line in p.stdout.splitlines() if line[:2] in ("E:", "W:")], p.stdout


def test_package_carries_units_conffiles_sysctl_and_debian_dependencies(deb):
    files = subprocess.run(["dpkg-deb", "-c", str(deb)], capture_output=True, text=True, check=True).stdout
    for path in [
        "./etc/mipart/profile.yaml",
        "./etc/sysctl.d/60-mipart.conf",
        "./usr/bin/mipart",
        "./usr/lib/sysusers.d/mipart.conf",
        "./usr/lib/tmpfiles.d/mipart.conf",
        *(f"./lib/systemd/system/{p.name}" for p in (REPO / "units").glob("*") if p.is_file()),
    ]:
        assert f" {path}\n" in files + "\n", path
    # The profile may carry a token in env: root-only, as docs/security.md says.
    [profile_line] = [line for line in files.splitlines() if line.endswith(" ./etc/mipart/profile.yaml")]
    assert profile_line.startswith("-rw-r----- root/root "), profile_line
    depends = subprocess.run(["dpkg-deb", "-f", str(deb), "Depends"], capture_output=True, text=True, check=True).stdout
    for package in (
        "python3-yaml",
        "python3-click",
        "python3-aiohttp",
        "python3-structlog",
        "python3-jeepney",
        "python3-sdnotify",
    ):
        assert package in depends, (package, depends)
    assert "numa_balancing = 0" in (REPO / "etc/sysctl.d/60-mipart.conf").read_text()


def test_apt_install_live(machine: Machine, deb):
    install_deb(machine, deb)

    version = machine.run("mipart --version").stdout
    assert re.search(r"\d+\.\d+", version), version

    unit_files = machine.run("ls /lib/systemd/system/ | grep '^mipart' || true").stdout.split()
    assert sorted(unit_files) == sorted(p.name for p in (REPO / "units").glob("*") if p.is_file())
    for unit in unit_files:
        # Templates are verified through an instance name pointing at the template.
        path = f"/lib/systemd/system/{unit}"
        if "@." in unit:
            inst = unit.replace("@.", "@0.")
            machine.run(f"mkdir -p /run/verify && ln -sf {path} /run/verify/{inst}")
            path = f"/run/verify/{inst}"
        p = machine.run(f"systemd-analyze verify {path}", check=False)
        noise = [ln for ln in p.stderr.splitlines() if "mipart" in ln]
        assert not noise, f"{unit}:\n{p.stderr}"

    for unit in units_to_enable():
        assert enabled_state(machine, unit) == "enabled", unit
    assert not machine.run("systemctl list-units 'mipart*' --state=active --no-legend --plain").stdout.strip(), (
        "a live install must start nothing (partitioning may reload the GPU driver)"
    )

    user = machine.run("getent passwd mipart").stdout.strip().split(":")
    assert int(user[2]) < 1000 and user[5] == "/var/lib/mipart", user
    assert machine.run("getent group mipart", check=False).returncode == 0
    # root's (the launcher gives its HOMEs to the instances' uids), the cache the mipart group's
    owners = "stat -c '%U:%G %a' /var/lib/mipart /var/lib/mipart/home /var/lib/mipart/huggingface"
    assert machine.run(owners).stdout.split("\n")[:3] == ["root:root 755", "root:root 755", "mipart:mipart 770"]
    conffiles = machine.run("dpkg-query -W -f='${Conffiles}' mipart").stdout
    for f in (REPO / "etc").rglob("*"):
        if f.is_file():
            assert f"/{f.relative_to(REPO)} " in conffiles, f


def test_image_bake(machine: Machine, deb):
    """Installed before boot (no systemd running): all enabled, nothing started."""

    def bake(m: Machine):
        m.copy_in(deb, f"/var/tmp/{deb.name}")
        return m.offline(f"apt-get install -y -q /var/tmp/{deb.name}")

    p = machine.pre_boot(bake)
    out = p.stdout + p.stderr
    assert p.returncode == 0, out
    for bad in ("Running in chroot", "System has not been booted", "Failed to", "warning:"):
        assert bad not in out, f"{bad!r} while baking:\n{out}"
    assert not (machine.rootfs / "run/mipart").exists()

    state = machine.run("systemctl is-system-running", check=False).stdout.strip()
    assert state in ("running", "degraded"), state
    print(machine.run("systemctl --failed --no-legend; journalctl -b -u 'mipart*' --no-pager | tail -20").stdout)
    for unit in units_to_enable():
        assert enabled_state(machine, unit) == "enabled", unit
        # Enabled for real: the boot itself started it (whether it then succeeded
        # without GPUs is the partition tests' business).
        started = machine.run(f"systemctl show -P InactiveExitTimestampMonotonic {unit}").stdout
        assert int(started.strip() or 0) > 0, f"{unit} was not started at boot"
    assert machine.run("getent passwd mipart", check=False).returncode == 0


def test_purge_leaves_nothing_running(machine: Machine, deb):
    install_deb(machine, deb)
    units = " ".join(units_to_enable())
    if units:  # whatever they do here (no GPUs), purge must stop them
        machine.run(f"systemctl start --no-block {units}")
    # A serving instance that stays up: a runtime stand-in for the template.
    machine.run(
        "printf '[Service]\\nExecStart=/bin/sleep infinity\\n' "
        ">/run/systemd/system/mipart-vllm@.service && systemctl daemon-reload "
        "&& systemctl start mipart-vllm@0.service"
    )

    machine.run("apt-get purge -y -q mipart", timeout=300)
    assert machine.run("systemctl is-active mipart-vllm@0.service", check=False).stdout.strip() != "active"
    machine.run("rm /run/systemd/system/mipart-vllm@.service && systemctl daemon-reload")

    live = machine.run(
        "systemctl list-units --all 'mipart*' --no-legend --plain --state=active,activating,deactivating,reloading"
    ).stdout
    assert not live.strip(), live
    assert not machine.run("systemctl list-unit-files 'mipart*' --no-legend", check=False).stdout.strip()
    assert not machine.run("find /etc/systemd/system -name 'mipart*'").stdout.strip()
    assert machine.run("test -e /etc/mipart/profile.yaml", check=False).returncode != 0
    # Purge removes what mipart created, the default model cache included (docs/packaging.md).
    assert machine.run("test -e /var/lib/mipart", check=False).returncode != 0
    assert machine.run("command -v mipart", check=False).returncode != 0


def test_sim_host_in_container(machine: Machine, deb):
    install_deb(machine, deb)
    if machine.run("mipart sim --help", check=False).returncode != 0:
        pytest.xfail("`mipart sim` is not implemented yet")
    create_sim_host(machine)
    assert machine.run("ls -A /var/lib/mipart-sim").stdout.strip()
