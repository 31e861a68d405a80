"""The collection is checked as Galaxy and Ansible's own tooling check one: ansible-lint's
production profile, ansible-test sanity, and ansible-galaxy's build."""

from __future__ import annotations

import subprocess
import tarfile

import yaml
from ansible_tools import REPO, ansible_test_home, collection_copy, tool_env

GALAXY = REPO / "ansible_collections/mipart/host/galaxy.yml"


def run(args, cwd, env, timeout=1200):
    return subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


def test_ansible_lint_production_profile_passes(tmp_path, ansible_bin):
    root = collection_copy(tmp_path)
    done = run(["ansible-lint", "--profile", "production", "--offline", "."], root, tool_env(ansible_bin, tmp_path))
    assert done.returncode == 0, (done.stdout + done.stderr)[-6000:]
    assert "Profile 'production' was required, and it passed" in done.stdout + done.stderr


def test_ansible_test_sanity_passes(tmp_path, ansible_bin):
    """Every sanity test ansible-test has for a collection, on the Python mipart hosts run (Debian 12's)."""
    root = collection_copy(tmp_path)
    done = run(
        ["ansible-test", "sanity", "--python", "3.11", "--requirements", "--color", "no"],
        root,
        tool_env(ansible_bin, ansible_test_home()),
    )
    out = done.stdout + done.stderr
    assert done.returncode == 0, out[-8000:]
    assert 'Running sanity test "validate-modules"' in out and 'Running sanity test "pylint"' in out


def test_galaxy_build_makes_the_artifact_with_every_module(tmp_path, ansible_bin):
    meta = yaml.safe_load(GALAXY.read_text())
    out = tmp_path / "out"
    done = run(
        [
            "ansible-galaxy",
            "collection",
            "build",
            str(REPO / "ansible_collections/mipart/host"),
            "--output-path",
            str(out),
        ],
        tmp_path,
        tool_env(ansible_bin, tmp_path),
    )
    assert done.returncode == 0, done.stderr
    artifact = out / f"mipart-host-{meta['version']}.tar.gz"
    with tarfile.open(artifact) as tar:
        names = set(tar.getnames())
    for module in ("mipart_profile", "mipart_plan", "mipart_apply"):
        assert f"plugins/modules/{module}.py" in names
    assert {"MANIFEST.json", "meta/runtime.yml", "plugins/action/mipart_profile.py", "README.md"} <= names
    assert not any(name.startswith(("tests/output/", ".ansible/")) for name in names)
