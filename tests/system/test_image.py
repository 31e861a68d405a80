"""Baking an image with a real image builder (mkosi), then its first boot: partitions and serves."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

from testcache import cache_dir

from .nspawn import REPO, Machine
from .test_serving_systemd import SIM, Host

# What every bake of these tests puts beside the profile: the simulated host's paths.
DEFAULTS = f'MIPART_SYSFS_ROOT={SIM}\nMIPART_RELOAD_CMD="mipart sim reload {SIM}"\n'


def bake(deb: Path, profile: str, out: Path) -> Path:
    """packaging/bake-image, as a fleet runs it (mkosi installed on demand)."""
    if not shutil.which("mkosi"):
        subprocess.run(
            ["apt-get", "install", "-y", "-q", "--no-install-recommends", "mkosi"],
            check=True,
            capture_output=True,
            env=dict(os.environ, DEBIAN_FRONTEND="noninteractive"),
        )
    out.parent.mkdir(parents=True, exist_ok=True)
    (out.parent / "profile.yaml").write_text(profile)
    (out.parent / "default").write_text(DEFAULTS)
    cache = cache_dir() / "mkosi-packages"
    cache.mkdir(parents=True, exist_ok=True)
    p = subprocess.run(
        [
            str(REPO / "packaging/bake-image"),
            str(deb),
            str(out.parent / "profile.yaml"),
            str(out),
            str(out.parent / "default"),
        ],
        capture_output=True,
        text=True,
        timeout=1800,
        env=dict(os.environ, MKOSI_CACHE=str(cache)),
    )
    assert p.returncode == 0, (p.stdout + p.stderr)[-5000:]
    return out


def prepare_first_boot(m: Machine) -> None:
    """A simulated SPX/NPS1 host for the image's first boot, and the distro nginx off.

    The host network is shared: the distro's own nginx (a dependency) must not take port 80 here.
    """
    m.pre_boot(
        lambda mm: mm.offline(
            f"systemctl disable -q nginx.service && "
            f"mipart sim create {SIM} --model mi300x --gpus 8 --compute SPX --memory NPS1"
        )
    )


def test_mkosi_image_first_boot_partitions_and_serves(tmp_path, system_ready, deb):
    host = Host(None, code_partitions="16-17,24-25,32-33,40-41,48-49,56-57")
    image = bake(deb, host.profile_text(), tmp_path / "bake" / "image")
    assert (image / "etc/systemd/system/multi-user.target.wants/mipart-agent.service").is_symlink()
    assert not (image / "run/mipart").exists(), "nothing may run at bake time"
    with Machine(tmp_path / "machine", base=image) as m:
        host.m = m
        prepare_first_boot(m)
        host.wait_ready(timeout=300)
        assert (
            m.run(
                f"MIPART_SYSFS_ROOT={SIM} mipart partition assert --profile /etc/mipart/profile.yaml", check=False
            ).returncode
            == 0
        )
        assert "reload" in host.journal("mipart-partition")
        assert len(host.backends("code", 24)) > 1
        assert host.request("chat")[0] == 200
