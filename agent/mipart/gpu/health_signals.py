"""The health-signals seam: a GPU's own readings (RAS error counters, hwmon sensors), which the
gpu_errors probe and the status API read (see gpu-health.md)."""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from mipart.gpu.discovery import Discovery
from mipart.values import GpuSignals, PhysicalGpu


@runtime_checkable
class HealthSignals(Discovery, Protocol):
    def signals(self, gpu: PhysicalGpu) -> GpuSignals:
        """The GPU's RAS error counters and hwmon sensors; empty where the host has none."""
        ...
