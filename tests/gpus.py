"""Logical GPUs of 8 x MI300X hosts built by hand, numbered as mipart numbers them."""

from __future__ import annotations

from mipart.gpu.modes import logical_number, render_minor
from mipart.values import LogicalGpu

PARTS = {"SPX": 1, "DPX": 2, "QPX": 4, "CPX": 8}  # logical GPUs per MI300X in each compute mode


def bdf(gpu: int) -> str:
    return f"0000:{0x0C + 0x20 * gpu:02x}:00.0"


def logical_gpus(compute: str = "DPX", physical: int = 8) -> tuple[LogicalGpu, ...]:
    """Physical GPUs in PCI order, partitions within each, numbered by slot (8 x GPU + partition);
    render minors as the driver numbers them."""
    per = PARTS[compute]
    return tuple(
        LogicalGpu(
            index=logical_number(p, k),
            node_id=p * per + k + 1,
            gpu_id=40000 + p * per + k,
            render_minor=render_minor(logical_number(p, k)),
            physical_index=p,
            partition=k,
            bdf=bdf(p),
        )
        for p in range(physical)
        for k in range(per)
    )
