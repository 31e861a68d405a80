"""What the agent says about partition drift and its repartitions: /v1/status, /metrics,
STATUS= and `mipart status`, from snapshots (pure; no processes)."""

from __future__ import annotations

import json

from mipart.api import views
from mipart.api.contract import PartitionGpu, Status, to_json_text
from mipart.api.host import HostSnapshot
from mipart.api.metrics import prometheus_metrics
from mipart.cli.status import format_live
from mipart.daemon.notify import status_line
from mipart.daemon.snapshot import AgentSnapshot, AgentStatus
from mipart.prometheus import metric_sum


def gpu(index: int, compute: str, want: str) -> PartitionGpu:
    return PartitionGpu(
        index=index,
        bdf=f"0000:0{index}:00.0",
        compute=compute,
        memory="NPS2",
        compute_want=want,
        memory_want="NPS2",
        matches=compute == want,
        logical_gpus=(2 * index, 2 * index + 1),
    )


def host_snapshot(*gpus: PartitionGpu) -> HostSnapshot:
    return HostSnapshot(gpus=gpus, logical_gpus=2 * len(gpus), units={}, nginx_running=True)


def snapshot(**status) -> AgentSnapshot:
    return AgentSnapshot("/etc/mipart/profile.yaml", True, AgentStatus(profile_digest="d" * 64, **status), {}, {})


DRIFTING = host_snapshot(gpu(0, "DPX", "CPX"), gpu(1, "CPX", "CPX"))
MATCHING = host_snapshot(gpu(0, "CPX", "CPX"), gpu(1, "CPX", "CPX"))


def test_drift_names_the_command_to_run():
    partition = views.status(snapshot(), DRIFTING).partition
    assert partition.drift is True and partition.matches is False
    assert partition.action.startswith("run `systemctl reload mipart-agent` to apply the profile's gpus: while serving")
    matching = views.status(snapshot(), MATCHING).partition
    assert (matching.drift, matching.action) == (False, "")
    unknown = views.status(snapshot(), HostSnapshot(partition_error="no GPU")).partition
    assert (unknown.drift, unknown.action) == (False, "")


def test_while_a_repartition_runs_there_is_nothing_to_run():
    st = views.status(snapshot(repartition_phase="applying", repartition_started=1_700_000_000.0), DRIFTING)
    assert st.partition.drift is True and st.partition.action == ""
    assert (st.repartition.phase, st.repartition.started, st.repartition.finished) == (
        "applying",
        "2023-11-14T22:13:20Z",
        None,
    )


def test_metrics_carry_drift_and_the_repartition():
    text = prometheus_metrics(snapshot(), DRIFTING)
    assert metric_sum(text, "mipart_partition_drift") == 1 and metric_sum(text, "mipart_repartition_running") == 0
    assert metric_sum(text, "mipart_repartition_last_ok") is None  # none has finished yet
    text = prometheus_metrics(snapshot(repartition_phase="stopping"), MATCHING)
    assert metric_sum(text, "mipart_partition_drift") == 0 and metric_sum(text, "mipart_repartition_running") == 1
    failed = prometheus_metrics(snapshot(repartition_finished=1.0, repartition_error="EBUSY"), DRIFTING)
    assert metric_sum(failed, "mipart_repartition_last_ok") == 0
    assert (
        metric_sum(prometheus_metrics(snapshot(repartition_finished=1.0), MATCHING), "mipart_repartition_last_ok") == 1
    )


def test_status_line_says_what_the_repartition_does_or_what_it_failed_on():
    assert status_line(snapshot(repartition_phase="draining")) == "0/0 instances ready; repartitioning: draining"
    assert (
        status_line(snapshot(repartition_error="GPUs in use")) == "0/0 instances ready; repartition failed: GPUs in use"
    )
    rejected = status_line(snapshot(profile_error="bad", repartition_error="GPUs in use"))
    assert rejected == "0/0 instances ready; profile rejected, running the last good one: bad"


def test_mipart_status_shows_drift_the_phase_and_the_failure():
    def lines(snap, host_snapshot) -> list[str]:
        st = Status.from_json(json.loads(to_json_text(views.status(snap, host_snapshot))))
        return format_live(st, (), "127.0.0.1:8049")

    shown = lines(snapshot(repartition_finished=2.0, repartition_error="GPU 3 busy"), DRIFTING)
    assert (
        "  partition drift: run `systemctl reload mipart-agent` to apply the profile's gpus: while serving "
        "(one GPU at a time when no driver reload is needed; `mipart plan` shows the steps)" in shown
    )
    assert "  last repartition failed: GPU 3 busy" in shown
    running = lines(snapshot(repartition_phase="starting"), DRIFTING)
    assert "  repartitioning: starting" in running and not any("partition drift" in line for line in running)
    assert not any("drift" in line or "repartition" in line for line in lines(snapshot(), MATCHING))


def test_mipart_status_shows_the_hosts_known_traps():
    warned = HostSnapshot(
        gpus=MATCHING.gpus,
        logical_gpus=3,
        units={},
        nginx_running=True,
        warnings=("GPU 1 (0000:01:00.0) in CPX shows 1 of its 2 logical GPUs: the BMC's `ast` DRM driver is loaded",),
    )
    shown = format_live(views.status(snapshot(), warned), (), "127.0.0.1:8049")
    assert (
        "  warning: GPU 1 (0000:01:00.0) in CPX shows 1 of its 2 logical GPUs: the BMC's `ast` DRM driver is loaded"
        in shown
    )
    assert not any(line.startswith("  warning:") for line in format_live(views.status(snapshot(), MATCHING), (), "x"))
