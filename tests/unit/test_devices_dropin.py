"""Each instance only its own devices: the drop-in text (pure), its values checked, and the
drop-ins on disk kept in step with the spec files, with one daemon-reload per batch.
The real systemd's refusal of another instance's node is proven in tests/system/test_hardening_systemd.py."""

from __future__ import annotations

from dataclasses import replace

import pytest
import specs

from mipart.fsutil import write_atomic
from mipart.paths import instance_spec_path
from mipart.runners import unit_bus
from mipart.runners.devices import DropinError, dropin_path, dropin_text
from mipart.runners.dropins import Dropins
from mipart.runners.systemd import SystemdRunner
from mipart.serving.spec import InstanceSpec
from mipart.values import UnitState


def spec(
    n: int, runtime: str = "native", nodes: tuple[str, ...] | None = None, hf_home: str = "/var/lib/mipart/huggingface"
) -> InstanceSpec:
    planned = specs.spec(n)
    user = None if runtime != "native" else "mipart"
    return replace(planned, render_nodes=nodes or planned.render_nodes, runtime=runtime, user=user, hf_home=hf_home)


def directives(text: str) -> list[str]:
    return [line for line in text.splitlines() if line and not line.startswith("#")]


def test_a_native_instance_may_open_kfd_and_its_own_render_nodes_only():
    two = spec(3, nodes=("/dev/dri/renderD131", "/dev/dri/renderD140"))
    assert directives(dropin_text(two)) == [
        "[Service]",
        "DeviceAllow=/dev/kfd rw",
        "DeviceAllow=/dev/dri/renderD131 rw",
        "DeviceAllow=/dev/dri/renderD140 rw",
    ]


@pytest.mark.parametrize("runtime", ["docker", "podman"])
def test_a_container_client_gets_no_device(runtime):
    # The daemon hands the devices to the container; the client itself opens none.
    assert directives(dropin_text(spec(0, runtime=runtime))) == ["[Service]"]


def test_a_cache_outside_the_templates_writable_tree_is_granted_alone():
    assert "ReadWritePaths=-/srv/models/hf" in directives(dropin_text(spec(0, hf_home="/srv/models/hf")))
    assert "ReadWritePaths=-/srv/hf" in directives(dropin_text(spec(0, hf_home="/srv/hf/")))
    assert "ReadWritePaths=-/var/lib/mipartx" in directives(dropin_text(spec(0, hf_home="/var/lib/mipartx")))
    assert not [
        d for d in directives(dropin_text(spec(0, hf_home="/var/lib/mipart/hf"))) if d.startswith("ReadWritePaths")
    ]


@pytest.mark.parametrize(
    "node",
    [
        "/dev/dri/card0",
        "/dev/mem",
        "/dev/dri/renderD128 rw\nExecStartPre=/bin/sh",
        "/dev/dri/renderD%n",
        "/dev/dri/../mem",
        "/dev/dri/renderD",
        "dev/kfd",
    ],
)
def test_a_device_that_is_not_a_gpu_node_never_reaches_the_drop_in(node):
    with pytest.raises(DropinError, match="instance 2: device"):
        dropin_text(spec(2, nodes=(node,)))


@pytest.mark.parametrize(
    "hf_home", ["/srv/a b", "/srv/%n", "/srv/../etc", "/srv/x\nExecStartPre=/bin/sh", "relative", "/", "//"]
)
def test_a_cache_path_that_is_not_plain_never_reaches_the_drop_in(hf_home):
    with pytest.raises(DropinError, match="instance 0: hf_home"):
        dropin_text(spec(0, runtime="docker", hf_home=hf_home))


# -- on disk ---------------------------------------------------------------------------------


def write_specs(run_dir, specs):
    for s in specs:
        write_atomic(instance_spec_path(s.number, run_dir), s.file_text())


def test_a_batch_writes_every_drop_in_and_reloads_once(tmp_path):
    run, units = tmp_path / "run", tmp_path / "units"
    write_specs(run, [spec(n) for n in range(4)])
    dropins, reloads = Dropins(run, units), []
    for _ in range(4):  # one sync per start of the batch
        assert dropins.sync(lambda: reloads.append(1)) == {}
    assert len(reloads) == 1
    for n in range(4):
        assert dropin_path(units, n) == units / f"mipart-vllm@{n}.service.d" / "50-mipart-devices.conf"
        assert dropin_path(units, n).read_text() == dropin_text(spec(n))
    # A changed spec (another partition) rewrites its drop-in; a removed one loses it.
    write_specs(run, [replace(spec(1), render_nodes=("/dev/dri/renderD200",))])
    instance_spec_path(3, run).unlink()
    dropins.sync(lambda: reloads.append(1))
    assert len(reloads) == 2
    assert "DeviceAllow=/dev/dri/renderD200 rw" in dropin_path(units, 1).read_text()
    assert not dropin_path(units, 3).parent.exists()


def test_a_refused_spec_gets_no_drop_in_and_the_others_still_do(tmp_path):
    run, units = tmp_path / "run", tmp_path / "units"
    write_specs(run, [spec(0), spec(1, nodes=("/dev/sda",))])
    refused = Dropins(run, units).sync(lambda: None)
    assert list(refused) == [1] and "/dev/sda" in refused[1]
    assert dropin_path(units, 0).is_file() and not dropin_path(units, 1).exists()


class FakeManager(unit_bus.Manager):
    """The runner's Manager over a bus that records each call as (method, *args) and answers it."""

    def __init__(self):
        super().__init__(self)  # its own connection
        self.calls: list[tuple] = []

    def call(self, path, interface, method, signature, args, timeout):
        assert (path, interface) == (unit_bus.MANAGER_PATH, unit_bus.MANAGER) and len(signature) == len(args)
        self.calls.append((method, *args))
        return ()


class FakeRunner(SystemdRunner):
    """The real start/stop paths over a recording bus."""

    def __init__(self, run_dir, unit_dir):
        super().__init__(run_dir, unit_dir)
        self.manager = FakeManager()

    def _manager(self):
        return self.manager

    def _state(self, unit):
        return UnitState("inactive", "dead")


def test_the_systemd_runner_writes_drop_ins_before_starting_and_removes_them_on_stop(tmp_path):
    run, units = tmp_path / "run", tmp_path / "units"
    write_specs(run, [spec(0), spec(1)])
    runner = FakeRunner(run, units)
    runner.start(0)
    runner.start(1)
    assert [c[0] for c in runner.manager.calls] == ["Reload", "StartUnit", "StartUnit"]
    runner.stop(1)
    assert not dropin_path(units, 1).exists() and dropin_path(units, 0).exists()
    write_specs(run, [spec(2, nodes=("/dev/dri/card0",))])
    with pytest.raises(Exception, match="instance 2: device '/dev/dri/card0'"):
        runner.start(2)
    assert ("StartUnit", "mipart-vllm@2.service", "replace") not in runner.manager.calls
