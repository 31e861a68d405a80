"""Known traps of partitioned hosts, each turned into one clear line: pure, no I/O.

From docs/partitioning.md, "Known traps": a BMC's `ast` DRM driver hiding
partitions' DRM nodes, and tensor parallel across CPX partitions (vllm-project/vllm#20125).
"""

from __future__ import annotations

from collections.abc import Iterable

from mipart.values import HostState

AST_ADVICE = (
    "the BMC's `ast` DRM driver is loaded and takes DRM minors, which hides partitions' nodes; "
    "blacklist it (modprobe.blacklist=ast on the kernel command line, as AMD's docs suggest) and reboot"
)
NO_NODE_ADVICE = (
    "their DRM nodes are missing; check `ls /sys/class/drm` for another DRM driver holding minors "
    "and `journalctl -k` for amdgpu_xcp errors"
)
TP_ON_CPX = "vllm-project/vllm#20125"


def hidden_partitions(
    state: HostState, partitions: dict[int, dict[str, int]], drm_conflicts: tuple[str, ...]
) -> list[str]:
    """GPUs that show fewer logical GPUs than their compute mode implies (none read: no claim)."""
    if not state.logical:
        return []
    shown: dict[int, int] = {}
    for logical in state.logical:
        shown[logical.physical_index] = shown.get(logical.physical_index, 0) + 1
    lines = []
    for gpu in state.physical:
        implied = partitions.get(gpu.index, {}).get(gpu.compute)
        if implied and shown.get(gpu.index, 0) < implied:
            advice = AST_ADVICE if "ast" in drm_conflicts else NO_NODE_ADVICE
            lines.append(
                f"GPU {gpu.index} ({gpu.bdf}) in {gpu.compute} shows {shown.get(gpu.index, 0)} of its {implied} "
                f"logical GPUs: {advice}"
            )
    return lines


def tensor_parallel_on_cpx(
    compute_of_logical: dict[int, str], groups: Iterable[tuple[str, tuple[int, ...]]]
) -> list[str]:
    """One line per service whose tensor-parallel group spans CPX partitions.

    `compute_of_logical`: logical GPU -> the compute mode of its physical GPU after the plan;
    `groups`: (service, logical GPUs) per instance.
    """
    services = []
    for service, logical in groups:
        if len(logical) > 1 and any(compute_of_logical.get(i) == "CPX" for i in logical) and service not in services:
            services.append(service)
    return [
        f"services.{service} runs tensor parallel across CPX partitions; vLLM has returned garbage output so "
        f"({TP_ON_CPX}): "
        "check its output, or give each instance one CPX partition (tensor_parallel: 1) or a DPX/QPX partition"
        for service in services
    ]
