"""The kernel decides: each host's own compute/memory pair table, read before any write, through
the real CLI on simulated hosts (issue 11, points 1-3).

Write and reload counts are the simulator's, which counts every partition write and every
driver reload it receives.
"""

from __future__ import annotations

import errno
import json
from pathlib import Path

import pytest
from conftest import SimRoot, create_sim, mipart

from mipart.api.contract import to_json_text
from mipart.api.host import collect_host
from mipart.api.views import partition as partition_view
from mipart.daemon.snapshot import AgentStatus
from mipart.gpu import open_backend
from mipart.names import RUN_DIR_VAR
from mipart.nginx.files import BACK, FRONT, NginxFiles
from mipart.sim import kernel

BDF0 = "0000:05:00.0"

NGINX = (NginxFiles.of(BACK, Path("/nonexistent")), NginxFiles.of(FRONT, Path("/nonexistent")))


def config(host: SimRoot, name: str, bdf: str = BDF0) -> str:
    return (host.root / "bus/pci/devices" / bdf / "compute_partition_config" / name).read_text()


def test_mainline_refuses_cpx_nps2_before_any_write_or_reload_naming_what_it_offers(tmp_path):
    host = create_sim(tmp_path)  # mainline rules, SPX/NPS1
    profile = host.profile("gpus: {compute: CPX, memory: NPS2}\n")
    assert host.run("validate", profile).returncode == 0  # some kernels take it: only the host can say
    before = host.state()
    for verb in ("plan", "apply"):
        done = host.run("partition", verb, "--profile", profile)
        assert done.returncode == 1
        assert done.stderr.splitlines() == [
            "mipart: GPU 0 (0000:05:00.0): compute CPX cannot run under memory NPS2; set gpus.memory to NPS1 or NPS4: "
            "CPX takes NPS1 or NPS4 on this host (per the kernel's table); nothing was written or reloaded"
        ]
    after = host.state()
    assert after["counters"] == {"writes": 0, "reloads": 0}
    assert after == before  # the previews that read the table were put back


def test_seed000_rules_apply_qpx_nps2_in_one_reload(tmp_path):
    host = create_sim(tmp_path, rules="rocm-mi300x")
    profile = host.profile("gpus: {compute: QPX, memory: NPS2}\n")
    done = host.run("partition", "apply", "--profile", profile)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "applied: 9 writes, 1 reloads; 32 logical GPUs"
    assert host.state()["counters"] == {"writes": 9, "reloads": 1}
    assert host.run("partition", "assert", "--profile", profile).returncode == 0


def test_plan_shows_the_table_it_used_and_where_it_came_from(tmp_path):
    host = create_sim(tmp_path, rules="rocm-mi300x")
    profile = host.profile("gpus: {compute: CPX, memory: NPS2}\n")
    text = host.run("partition", "plan", "--profile", profile).stdout.splitlines()
    assert (
        text[0] == "partition rules for GPUs 0-7 (kernel): SPX: NPS1; DPX: NPS1, NPS2; QPX: NPS1, NPS2; CPX: NPS1, NPS2"
    )
    plan = json.loads(host.run("partition", "plan", "--json", "--profile", profile).stdout)
    assert plan["rules"] == [
        {
            "gpus": list(range(8)),
            "source": "kernel",
            "pairs": {"SPX": ["NPS1"], "DPX": ["NPS1", "NPS2"], "QPX": ["NPS1", "NPS2"], "CPX": ["NPS1", "NPS2"]},
        }
    ]
    assert len(plan["logical_gpus"]) == 64


def test_without_compute_partition_config_the_mainline_rules_stand_in_and_say_so(tmp_path):
    host = create_sim(tmp_path, "--no-partition-config", rules="rocm-mi300x")
    assert not (host.root / "bus/pci/devices" / BDF0 / "compute_partition_config").exists()
    done = host.run("partition", "plan", "--profile", host.profile("gpus: {compute: CPX, memory: NPS2}\n"))
    assert done.returncode == 1
    # Mainline's CPX: NPS1 or NPS4, masked by what this platform offers (seed 000's: NPS1, NPS2).
    assert (
        "CPX takes NPS1 on this host (per the mainline fallback (no compute_partition_config/: an older kernel, whose rules are those from before 6.16))"
        in done.stderr
    )
    shown = host.run("partition", "plan", "--profile", host.profile("gpus: {compute: DPX, memory: NPS2}\n")).stdout
    assert shown.splitlines()[0] == (
        "partition rules for GPUs 0-7 (mainline fallback (no compute_partition_config/: an older kernel, whose rules are those from before 6.16)): "
        "SPX: NPS1; DPX: NPS1, NPS2; QPX: NPS1; CPX: NPS1"
    )


def test_reading_the_table_previews_each_mode_and_puts_xcp_config_back(tmp_path):
    host = create_sim(tmp_path, compute="DPX", memory="NPS2", gpus=2)
    assert config(host, "supported_xcp_configs") == "SPX, DPX, QPX, CPX\n"
    assert (config(host, "xcp_config"), config(host, "supported_nps_configs")) == ("DPX\n", "NPS1, NPS2\n")
    kernel.kernel_write(
        host.root, BDF0, "compute_partition_config/xcp_config", "cpx"
    )  # a preview: matched case-insensitively
    assert (config(host, "xcp_config"), config(host, "supported_nps_configs")) == ("CPX\n", "NPS1, NPS4\n")
    assert host.state()["gpus"][0]["compute"] == "DPX" and host.state()["counters"]["writes"] == 0
    with pytest.raises(OSError) as refused:
        kernel.kernel_write(host.root, BDF0, "compute_partition_config/xcp_config", "TPX")  # 8 XCDs have no TPX
    assert refused.value.errno == errno.EINVAL
    backend = open_backend(host.root)
    backend.pair_table(backend.discover().physical[0])
    assert config(host, "xcp_config") == "CPX\n"  # the selection found is the one left
    assert host.state()["counters"] == {"writes": 0, "reloads": 0}
    with pytest.raises(OSError) as read_only:
        kernel.kernel_write(host.root, BDF0, "compute_partition_config/supported_nps_configs", "NPS2")
    assert read_only.value.errno == errno.EACCES


def test_the_simulator_refuses_to_create_a_layout_its_kernel_refuses(tmp_path):
    done = mipart("sim", "create", tmp_path / "a", "--compute", "CPX", "--memory", "NPS2")
    assert done.returncode == 1
    assert done.stderr.strip() == (
        "mipart: compute mode CPX is not valid under memory mode NPS2 with the mainline rules "
        "(the driver refuses it; CPX takes NPS1 or NPS4)"
    )
    assert (
        mipart(
            "sim", "create", tmp_path / "b", "--compute", "CPX", "--memory", "NPS2", "--rules", "rocm-mi300x"
        ).returncode
        == 0
    )
    done = mipart("sim", "create", tmp_path / "c", "--model", "mi300a", "--compute", "TPX")
    assert done.returncode == 0, done.stderr
    assert mipart("sim", "show", tmp_path / "c").stdout.splitlines()[0].endswith("rules mainline")


def test_validate_keeps_only_the_rules_every_kernel_holds(tmp_path):
    for pair in ("CPX, memory: NPS2", "DPX, memory: NPS4", "QPX, memory: NPS2", "TPX, memory: NPS1"):
        path = tmp_path / "p.yaml"
        path.write_text(f"version: 1\ngpus: {{compute: {pair}}}\n")
        assert mipart("validate", path).returncode == 0, pair
    path.write_text("version: 1\ngpus: {compute: SPX, memory: NPS2}\n")
    done = mipart("validate", path)
    assert done.returncode == 1 and "SPX needs NPS1" in done.stderr


def test_export_carries_the_table_as_comments_and_still_validates(tmp_path):
    host = create_sim(tmp_path, compute="QPX", memory="NPS4")
    exported = host.run("partition", "export")
    assert exported.returncode == 0, exported.stderr
    lines = exported.stdout.splitlines()
    assert (
        lines[0]
        == "# partition rules for GPUs 0-7 (kernel): SPX: NPS1; DPX: NPS1, NPS2; QPX: NPS1, NPS4; CPX: NPS1, NPS4"
    )
    path = tmp_path / "exported.yaml"
    path.write_text(exported.stdout)
    assert host.run("validate", path).returncode == 0
    assert host.run("partition", "assert", "--profile", path).returncode == 0


def test_status_api_carries_the_table(tmp_path, monkeypatch):
    host = create_sim(tmp_path, rules="rocm-mi300x", gpus=2)
    monkeypatch.setenv(RUN_DIR_VAR, str(host.run_dir))
    snap = collect_host(host.root, runner=None, nginx=NGINX, gpu_spec=None)  # runner unknown: reported as such
    sent = json.loads(to_json_text(partition_view(snap, AgentStatus())))
    assert sent["warnings"] == []
    assert sent["rules"] == [
        {
            "gpus": [0, 1],
            "source": "kernel",
            "pairs": [
                {"compute": "SPX", "memory": ["NPS1"]},
                {"compute": "DPX", "memory": ["NPS1", "NPS2"]},
                {"compute": "QPX", "memory": ["NPS1", "NPS2"]},
                {"compute": "CPX", "memory": ["NPS1", "NPS2"]},
            ],
        }
    ]


def test_an_ast_bmc_driver_hiding_a_partition_is_named(tmp_path):
    host = create_sim(tmp_path, "--bmc-ast", compute="CPX", memory="NPS1")
    assert len(open_backend(host.root).discover().logical) == 63  # card0 is the BMC's: the 64th partition has no node
    done = host.run("partition", "plan", "--profile", host.profile("gpus: {compute: CPX, memory: NPS1}\n"))
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[-1] == (
        "warning: GPU 7 (0000:e5:00.0) in CPX shows 7 of its 8 logical GPUs: the BMC's `ast` DRM driver is loaded and takes "
        "DRM minors, which hides partitions' nodes; blacklist it (modprobe.blacklist=ast on the kernel command line, "
        "as AMD's docs suggest) and reboot"
    )
    profile = host.profile("gpus: {compute: CPX, memory: NPS1}\n")
    assert (
        "mipart: warning: GPU 7 (0000:e5:00.0) in CPX shows 7 of its 8"
        in host.run("partition", "assert", "--profile", profile).stderr
    )
    applied = host.run("partition", "apply", "--profile", profile)
    assert applied.returncode == 0 and "mipart: warning: GPU 7 (0000:e5:00.0) in CPX shows 7 of its 8" in applied.stderr


def test_the_status_api_names_a_hidden_partition(tmp_path, monkeypatch):
    host = create_sim(tmp_path, "--bmc-ast", compute="CPX", memory="NPS1")
    monkeypatch.setenv(RUN_DIR_VAR, str(host.run_dir))
    sent = json.loads(
        to_json_text(partition_view(collect_host(host.root, runner=None, nginx=NGINX, gpu_spec=None), AgentStatus()))
    )
    assert [w.split(":")[0] for w in sent["warnings"]] == ["GPU 7 (0000"]
    assert "`ast` DRM driver" in sent["warnings"][0]


def test_no_hidden_partition_no_warning(tmp_path):
    host = create_sim(tmp_path, compute="CPX", memory="NPS1")
    done = host.run("partition", "plan", "--profile", host.profile("gpus: {compute: CPX, memory: NPS1}\n"))
    assert done.returncode == 0 and "warning" not in done.stdout + done.stderr


@pytest.mark.parametrize("compute, warned", [("CPX", True), ("DPX", False)])
def test_tensor_parallel_across_cpx_partitions_is_warned_at_plan_time(tmp_path, compute, warned):
    host = create_sim(tmp_path, compute="SPX", memory="NPS1")
    profile = host.profile(
        f"gpus: {{compute: {compute}, memory: NPS1}}\nservices:\n  chat: {{model: org/m, listen: 18040, tensor_parallel: 2}}\n"
    )
    done = host.run("plan", "--profile", profile)
    assert done.returncode == 0, done.stderr
    line = (
        "mipart: warning: services.chat runs tensor parallel across CPX partitions; vLLM has returned garbage output so "
        "(vllm-project/vllm#20125): check its output, or give each instance one CPX partition (tensor_parallel: 1) "
        "or a DPX/QPX partition"
    )
    assert done.stderr.splitlines() == ([line] if warned else [])


def test_a_visible_devices_variable_in_env_that_conflicts_with_mipart_s_is_refused(tmp_path):
    path = tmp_path / "p.yaml"
    for var in ("HIP_VISIBLE_DEVICES", "ROCR_VISIBLE_DEVICES", "CUDA_VISIBLE_DEVICES"):
        path.write_text(f"version: 1\nservices:\n  chat: {{model: org/m, listen: 18040, env: {{{var}: '0'}}}}\n")
        done = mipart("validate", path)
        assert done.returncode == 1 and f"services.chat.env.{var} is set by mipart for each instance" in done.stderr, (
            done.stderr
        )


def test_the_old_rule_set_name_is_still_taken(tmp_path):
    """`--rules rocm-seed000` was renamed rocm-mi300x (named for the hosts it describes); the old word stays one release."""
    assert mipart("sim", "create", tmp_path / "old", "--rules", "rocm-seed000").returncode == 0
    assert '"rules": "rocm-mi300x"' in (tmp_path / "old/.mipart-sim/state.json").read_text()
    assert "rocm-seed000" not in mipart("sim", "create", "--help").stdout
