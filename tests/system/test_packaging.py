"""The package the Debian way, on real systemd: autopkgtest, upgrades that keep serving, a fleet's apt repo.

Every test boots its own nspawn machine from the cached rootfs and installs what `make deb` built.
"""

from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path

import pytest

from .nspawn import REPO, Machine, build_deb, install_deb
from .test_serving_systemd import SIM, Host, Traffic, changed

NEXT = "+next1"  # a newer build of the same source: what an upgrade installs


@pytest.fixture(scope="session")
def deb_next(tmp_path_factory, deb):
    version = subprocess.run(
        ["dpkg-deb", "-f", str(deb), "Version"], capture_output=True, text=True, check=True
    ).stdout.strip()
    return build_deb(tmp_path_factory.mktemp("deb-next"), version + NEXT)


def version_of(m: Machine) -> str:
    return m.run("dpkg-query -W -f='${Version}' mipart").stdout.strip()


def serve_16(m: Machine, deb: Path) -> Host:
    """The package installed and serving 16 fake instances (8 x MI300X in DPX/NPS2) under systemd."""
    install_deb(m, deb)
    host = Host(m, code_partitions="16-17,24-25,32-33,40-41,48-49,56-57")
    m.run(f"mipart sim create {SIM} --model mi300x --gpus 8 --compute DPX --memory NPS2")
    host.write_default()
    host.write_profile()
    m.run("systemctl start mipart-partition mipart-agent", timeout=180)
    host.wait_ready(timeout=180)
    return host


def test_autopkgtest_runs_in_the_container(machine: Machine, deb):
    """debian/tests against the installed package, with autopkgtest's own runner.

    The nspawn machine is the throwaway testbed, so the tests' isolation-container and
    breaks-testbed restrictions hold; the null runner cannot know that, hence --ignore-restrictions.
    """
    machine.run(
        "apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends autopkgtest",
        timeout=900,
    )
    machine.copy_in(deb, f"/var/tmp/{deb.name}")
    machine.run("mkdir -p /var/tmp/src")
    machine.copy_in(REPO / "debian", "/var/tmp/src/debian")
    p = machine.run(
        f"cd /var/tmp && autopkgtest --ignore-restrictions=isolation-container,breaks-testbed "
        f"./{deb.name} ./src -- null",
        check=False,
        timeout=1200,
    )
    out = p.stdout + p.stderr
    assert p.returncode == 0, out[-6000:]
    for test in ("units-verify", "sim-serves", "remove-purge"):
        assert any(line.startswith(test) and line.rstrip().endswith("PASS") for line in out.splitlines()), (
            f"{test}:\n{out[-6000:]}"
        )


def test_upgrade_and_downgrade_keep_serving(tmp_path, system_ready, deb, deb_next):
    """A newer build over a serving host: 0 instance restarts, the agent back, no client request failed."""
    with Machine(tmp_path / "machine") as m:
        host = serve_16(m, deb)
        old = version_of(m)
        for target, flags in ((deb_next, ""), (deb, "--allow-downgrades")):
            units_before = host.units()
            agent_before = host.show("mipart-agent", "MainPID")["MainPID"]
            m.copy_in(target, f"/var/tmp/{target.name}")
            with Traffic(host) as traffic:
                time.sleep(1)
                m.run(
                    f"cd /var/tmp && DEBIAN_FRONTEND=noninteractive apt-get install -y -q {flags} ./{target.name}",
                    timeout=600,
                )
                host.wait_ready(timeout=120)
                time.sleep(1)
            assert traffic.ok > 0 and traffic.failures == [], traffic.failures[:10]
            assert changed(units_before, host.units()) == set(), "an upgrade must not restart instances"
            assert host.show("mipart-agent", "MainPID")["MainPID"] != agent_before, "the agent restarts on upgrade"
            assert m.run("systemctl is-active mipart-nginx").stdout.strip() == "active"
        assert version_of(m) == old


def test_fleet_installs_and_upgrades_from_a_signed_apt_repo(tmp_path, system_ready, deb, deb_next, request):
    """reprepro signs a repository holding two versions; the machine installs, then `apt upgrade`s."""
    for tool in ("reprepro", "gpg"):
        assert shutil.which(tool), f"{tool} is not installed (make test installs it)"
    gnupg, repo = tmp_path / "gnupg", tmp_path / "repo"
    gnupg.mkdir(mode=0o700)
    env = {"GNUPGHOME": str(gnupg), "PATH": "/usr/bin:/bin"}
    # gpg (and reprepro's signing through it) starts a gpg-agent for this GNUPGHOME that outlives the suite
    request.addfinalizer(lambda: subprocess.run(["gpgconf", "--kill", "all"], env=env, check=False, timeout=30))

    def sh(*args: str) -> str:
        return subprocess.run(args, env=env, capture_output=True, text=True, check=True).stdout

    sh(
        "gpg",
        "--batch",
        "--passphrase",
        "",
        "--quick-gen-key",
        "mipart test repo <repo@mipart.invalid>",
        "ed25519",
        "sign",
        "never",
    )
    key = next(
        line.split(":")[9]
        for line in sh("gpg", "--batch", "--with-colons", "--list-secret-keys").splitlines()
        if line.startswith("fpr:")
    )
    (repo / "conf").mkdir(parents=True)
    (repo / "conf/distributions").write_text(
        f"Codename: bookworm\nComponents: main\nArchitectures: amd64\nSignWith: {key}\n"
    )
    sh("gpg", "--batch", "--yes", "--export", "--output", str(tmp_path / "mipart.gpg"), key)

    def publish(package: Path) -> None:
        sh("reprepro", "-b", str(repo), "includedeb", "bookworm", str(package))

    with Machine(tmp_path / "machine") as m:
        publish(deb)
        m.run("mkdir -p /etc/apt/keyrings")
        m.copy_in(tmp_path / "mipart.gpg", "/etc/apt/keyrings/mipart.gpg")
        m.run(
            "printf 'deb [signed-by=/etc/apt/keyrings/mipart.gpg] file:/srv/mipart-repo bookworm main\\n' "
            ">/etc/apt/sources.list.d/mipart.list"
        )

        def sync() -> None:
            m.run("rm -rf /srv/mipart-repo")
            m.copy_in(repo, "/srv/mipart-repo")
            m.run("chmod -R a+rX /srv/mipart-repo")

        sync()
        m.run("apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q mipart", timeout=900)
        first = version_of(m)
        publish(deb_next)
        sync()
        p = m.run("apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get upgrade -y -q", timeout=900)
        assert version_of(m) == first + NEXT, p.stdout[-3000:]
        # A tampered index is refused: the signature is checked, not just present.
        m.run(
            "sed -i 's/^Codename: bookworm$/Codename: bookworm-tampered/' /srv/mipart-repo/dists/bookworm/InRelease "
            "&& rm -f /srv/mipart-repo/dists/bookworm/Release"
        )
        bad = m.run("apt-get update -q", check=False, timeout=300)
        assert "BADSIG" in bad.stdout + bad.stderr, bad.stdout + bad.stderr
