"""A GPU's own health readings from sysfs: RAS error counters and hwmon sensors (docs/gpu-health.md).

Absent files are normal (no RAS on the part, no hwmon sensor of a kind) and read as nothing;
a file that reads garbage is skipped rather than failing the agent: these are observations,
not the state partitioning depends on.
"""

from __future__ import annotations

import re
from pathlib import Path

from mipart.values import GpuSignals, PhysicalGpu

RAS_DIR = "ras"
RAS_SUFFIX = "_err_count"
# What a counter reads while its GPU resets (amdgpu_ras.c); no count: the probe keeps the last real one.
INACCESSIBLE = "Query currently inaccessible"
_COUNT = re.compile(r"^\s*(ue|ce)\s*:\s*(\d+)\s*$", re.MULTILINE)
_SENSOR = re.compile(r"^temp(\d+)_input$")


def read_signals(gpu: PhysicalGpu) -> GpuSignals:
    return GpuSignals(gpu.index, gpu.bdf, ras_errors(gpu.path), temperatures(gpu.path), power_watts(gpu.path))


def ras_errors(dev: Path) -> tuple[tuple[str, int, int], ...]:
    """Per block: amdgpu's ras/<block>_err_count reads 'ue: N' and 'ce: N' lines (INACCESSIBLE, no block)."""
    found = []
    for path in sorted((dev / RAS_DIR).glob(f"*{RAS_SUFFIX}")):
        counts = dict((k, int(v)) for k, v in _COUNT.findall(_text(path)))
        if counts:
            found.append((path.name[: -len(RAS_SUFFIX)], counts.get("ue", 0), counts.get("ce", 0)))
    return tuple(found)


def temperatures(dev: Path) -> tuple[tuple[str, float], ...]:
    """hwmon temp<N>_input is millidegrees Celsius; temp<N>_label names the sensor (edge, junction, mem)."""
    found = []
    for hwmon in _hwmons(dev):
        for path in sorted(hwmon.iterdir()):
            match = _SENSOR.match(path.name)
            value = _number(path) if match else None
            if match and value is not None:
                label = _text(hwmon / f"temp{match[1]}_label").strip() or f"temp{match[1]}"
                found.append((label, value / 1000))
    return tuple(found)


def power_watts(dev: Path) -> float | None:
    """hwmon power1_average (older kernels) or power1_input, in microwatts."""
    for hwmon in _hwmons(dev):
        for name in ("power1_average", "power1_input"):
            value = _number(hwmon / name)
            if value is not None:
                return value / 1_000_000
    return None


def _hwmons(dev: Path) -> list[Path]:
    return sorted(p for p in (dev / "hwmon").glob("hwmon*") if p.is_dir())


def _text(path: Path) -> str:
    try:
        return path.read_text()
    except (OSError, UnicodeDecodeError):
        return ""


def _number(path: Path) -> float | None:
    try:
        return float(_text(path).strip())
    except ValueError:
        return None
