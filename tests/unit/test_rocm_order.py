"""Finding 11: which GPUs ROCm enumerates where a server runs, and the visible-devices value the
launcher resolves from it; the fake engine enumerates the same way and refuses a value that
selects nothing or another instance's GPU."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.request

import pytest
from conftest import AGENT

from mipart.errors import UserError
from mipart.gpu import open_backend
from mipart.names import DEVICE_CGROUP_VAR, DEVICES_VAR, SYSFS_ROOT_VAR
from mipart.serving.visible import visible_value
from mipart.sim import kernel
from mipart.sim.ports import free_block


@pytest.fixture
def root(tmp_path):
    root = tmp_path / "sys"
    kernel.create(root, gpus=2, compute="DPX", memory="NPS2")
    return root


def confined(root, *minors: int) -> dict[str, str]:
    """What the launcher gives a server through the simulated root's backend: its own devices."""
    return open_backend(root).device_env(("/dev/kfd", *(f"/dev/dri/renderD{m}" for m in minors)))


def test_unconfined_rocm_sees_every_gpu_in_kfd_order_and_confined_only_its_own(root):
    backend = open_backend(root)
    every = ("/dev/dri/renderD128", "/dev/dri/renderD129", "/dev/dri/renderD136", "/dev/dri/renderD137")
    assert backend.rocm_devices({}) == every
    assert visible_value(9, ("/dev/dri/renderD137",), backend.rocm_devices({})) == "3"  # its global position
    own = backend.rocm_devices(confined(root, 137))
    assert own == ("/dev/dri/renderD137",)
    assert visible_value(9, ("/dev/dri/renderD137",), own) == "0"  # as in a unit with DeviceAllow=, or a container


def test_a_render_node_rocm_cannot_open_for_another_reason_is_one_line(root):
    node = root / "dev/dri/renderD129"
    node.unlink()
    node.symlink_to(node.name)  # ELOOP: neither ENOENT nor EPERM, so libhsakmt would stop
    with pytest.raises(UserError, match=r"^/dev/dri/renderD129: cannot open: Too many levels of symbolic links; ROCm"):
        open_backend(root).rocm_devices({})


def test_an_instance_whose_gpu_rocm_does_not_see_is_refused_in_one_line():
    with pytest.raises(UserError) as caught:
        visible_value(9, ("/dev/dri/renderD137",), ("/dev/dri/renderD128",))
    assert str(caught.value).startswith(
        "instance 9: ROCm does not see its GPU /dev/dri/renderD137 from here (it sees /dev/dri/renderD128)"
    )


def engine(root, env: dict[str, str], port: int) -> subprocess.Popen:
    argv = [sys.executable, "-m", "mipart.sim.engine", "--port", str(port)]
    full = {k: v for k, v in os.environ.items() if not k.endswith("VISIBLE_DEVICES")}
    return subprocess.Popen(argv, env={**full, "PYTHONPATH": str(AGENT), **env}, stderr=subprocess.PIPE, text=True)


@pytest.mark.parametrize(
    "visible, words",
    [
        ("", "CUDA_VISIBLE_DEVICES= selects no GPU (ROCm enumerates /dev/dri/renderD137 here)"),
        (
            "1",
            "CUDA_VISIBLE_DEVICES=1: '1' is no index of the 1 GPUs it picks from (ROCm enumerates /dev/dri/renderD137 here)",
        ),
    ],
)
def test_the_fake_engine_refuses_a_value_that_selects_nothing(root, visible, words):
    proc = engine(root, {**confined(root, 137), "CUDA_VISIBLE_DEVICES": visible}, free_block(1))
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 1
    [line] = err.splitlines()
    assert line.endswith(f"refusing to start: {words}"), line


def test_an_unconfined_fake_engine_refuses_a_global_index_that_is_another_instances_gpu(root):
    """Unconfined (no device cgroup), ROCm sees every GPU: index 0 is GPU 0's, not this instance's."""
    env = {**confined(root, 137), "CUDA_VISIBLE_DEVICES": "0"}
    del env[DEVICE_CGROUP_VAR]
    proc = engine(root, env, free_block(1))
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 1
    [line] = err.splitlines()
    assert line.endswith(
        "refusing to start: CUDA_VISIBLE_DEVICES=0 selects /dev/dri/renderD128, not this instance's own GPU "
        "(/dev/dri/renderD137); ROCm enumerates /dev/dri/renderD128, /dev/dri/renderD129, /dev/dri/renderD136, "
        "/dev/dri/renderD137 here"
    ), line


def test_the_fake_engine_reports_what_it_enumerated_and_runs_on(root):
    port = free_block(1)
    proc = engine(root, {**confined(root, 136, 137), "CUDA_VISIBLE_DEVICES": "1,0"}, port)
    try:
        line = ""
        while "listening on http" not in line:
            line = proc.stderr.readline()
            assert line, "the engine exited"
            if "GPUs:" in line:
                assert line.rstrip().endswith(
                    "GPUs: ROCm enumerates /dev/dri/renderD136, /dev/dri/renderD137; CUDA_VISIBLE_DEVICES=1,0 selects "
                    "/dev/dri/renderD137, /dev/dri/renderD136"
                )
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/mipart/devices", timeout=10) as answer:
            report = json.load(answer)
        assert report == {
            "enumerated": ["/dev/dri/renderD136", "/dev/dri/renderD137"],
            "visible": {"CUDA_VISIBLE_DEVICES": "1,0"},
            "selected": ["/dev/dri/renderD137", "/dev/dri/renderD136"],
            "own": ["/dev/dri/renderD136", "/dev/dri/renderD137"],
        }
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_off_a_simulated_host_the_fake_engine_enumerates_nothing(root):
    env = {DEVICES_VAR: f"{root}/dev/kfd", SYSFS_ROOT_VAR: ""}
    port = free_block(1)
    proc = engine(root, env, port)
    try:
        while "listening on http" not in proc.stderr.readline():
            pass
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/mipart/devices", timeout=10) as answer:
            assert json.load(answer) == {}
    finally:
        proc.terminate()
        proc.wait(timeout=30)
