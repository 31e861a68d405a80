"""The pinned Ansible tools (ansible-core, ansible-lint) for the ansible and system tiers.

Why a venv of their own and not the project's constraints: ansible-lint brings black, yamllint,
ruamel.yaml and jsonschema at versions of its own, and ansible-test's sanity tools pin PyYAML,
packaging, yamllint and pylint (ansible-core's `_data/requirements/sanity.*.txt`) against both
ansible-lint and our constraints.txt; ansible-test installs those into venvs of its own anyway.

tests/ansible/requirements.txt pins every package. Their wheels are downloaded once into
$MIPART_CACHE/ansible-wheels-<hash of the pins>/ (testcache: built aside and renamed, so a crash
leaves nothing half made); each test session installs them offline into a venv of its own (a
venv cannot be moved once built: its scripts name their interpreter by path). Without a cache
everything is fetched again. ansible-test's sanity venvs are cached by ansible-test itself under
HOME=$MIPART_CACHE/ansible-test-home.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

from testcache import cache_dir, cached

TESTS = Path(__file__).resolve().parent
REPO = TESTS.parent
PINS = TESTS / "ansible" / "requirements.txt"
COLLECTION = Path("ansible_collections/mipart/host")  # ansible-test needs exactly this path above the collection
# ansible-test bootstraps pip in each sanity venv with a get-pip script downloaded from a host
# these machines cannot reach; its own message says to save a script at the path below instead.
# Ours (tests/ansible/get_pip.py) does the same with ensurepip and PyPI. The version is the one
# ansible-core 2.19's ansible-test asks for (python_requirements.get_venv_packages).
ANSIBLE_TEST_PIP = "24.2"
PIP_TIMEOUT = 900


def _run(args: list[str], timeout: float, **kw) -> subprocess.CompletedProcess:
    done = subprocess.run(args, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL, **kw)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} -> exit {done.returncode}\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    return done


def _base_python() -> str:
    """The interpreter the project's venv was made from (Debian's python3), not the venv itself."""
    return getattr(sys, "_base_executable", None) or sys.executable


def wheels() -> Path:
    """The pinned wheels, downloaded once."""
    digest = hashlib.sha256(PINS.read_bytes()).hexdigest()[:12]
    return cached(cache_dir(), f"ansible-wheels-{digest}", _download)


def _download(tmp: Path) -> None:
    pip = [_base_python(), "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:", "-d", str(tmp)]
    _run([*pip, "-r", str(PINS)], timeout=PIP_TIMEOUT)


def make_venv(where: Path) -> Path:
    """A venv at WHERE with the pinned tools, installed offline from the cached wheels; returns its bin/."""
    _run([_base_python(), "-m", "venv", str(where)], timeout=300)
    python = where / "bin" / "python"
    _run(
        [
            str(python),
            "-m",
            "pip",
            "install",
            "-q",
            "--no-index",
            "--no-deps",
            "--find-links",
            str(wheels()),
            "-r",
            str(PINS),
        ],
        timeout=PIP_TIMEOUT,
    )
    _run([str(python), "-m", "pip", "check"], timeout=120)
    return where / "bin"


def tool_env(bin_dir: Path, home: Path | None = None) -> dict[str, str]:
    """The environment the tools run in: theirs first on PATH, nothing of the project's venv or PYTHONPATH."""
    env = {
        k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV") and not k.startswith("ANSIBLE_")
    }
    env.update(PATH=f"{bin_dir}:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", LANG="C.UTF-8")
    if home is not None:
        env["HOME"] = str(home)
    return env


def ansible_test_home() -> Path:
    """HOME for ansible-test: its sanity venvs are cached under it, with our pip bootstrap in its place."""
    home = cache_dir() / "ansible-test-home"
    target = home / ".ansible" / "test" / "cache" / f"get_pip_{ANSIBLE_TEST_PIP.replace('.', '_')}.py"
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(TESTS / "ansible" / "get_pip.py", target)
    return home


def collection_copy(dest: Path) -> Path:
    """The collection's files as git would take them (tracked, or new and not ignored), under
    DEST/ansible_collections/mipart/host: the tools then write their caches there, not in the checkout."""
    listed = _run(["git", "ls-files", "-co", "--exclude-standard", "-z", str(COLLECTION)], timeout=60, cwd=REPO)
    for name in filter(None, listed.stdout.split("\0")):
        source = REPO / name
        if source.is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, dest / name)
    return dest / COLLECTION


def install_collection(bin_dir: Path, dest: Path) -> Path:
    """Build the collection's artifact and install it under DEST, as docs/fleet.md tells a user; returns
    the path for ANSIBLE_COLLECTIONS_PATH."""
    env = tool_env(bin_dir, dest)
    out = dest / "artifact"
    _run(["ansible-galaxy", "collection", "build", str(REPO / COLLECTION), "--output-path", str(out)], 300, env=env)
    [artifact] = out.glob("mipart-host-*.tar.gz")
    _run(
        ["ansible-galaxy", "collection", "install", "--offline", str(artifact), "-p", str(dest / "collections")],
        300,
        env=env,
    )
    return dest / "collections"
