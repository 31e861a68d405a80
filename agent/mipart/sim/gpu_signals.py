"""The simulated host's GPU health files: RAS error counters and hwmon sensors, as amdgpu lays
them out on the PCI device (docs/gpu-health.md), so tests can make a GPU report errors or heat.

The agent reads them through the GPU backend like a real host's; nothing here is special-cased.
"""

from __future__ import annotations

from pathlib import Path

from mipart.errors import UserError
from mipart.fsutil import write_atomic
from mipart.gpu.amdgpu import physical_gpus
from mipart.gpu.signals import INACCESSIBLE, RAS_DIR, RAS_SUFFIX, ras_errors

HWMON = "hwmon/hwmon0"


def gpu_dir(root: Path, index: int) -> Path:
    gpus = physical_gpus(Path(root))
    if not 0 <= index < len(gpus):
        raise UserError(f"{root}: no GPU {index} (the simulated host has {len(gpus)}: 0-{len(gpus) - 1})")
    return gpus[index].path


def add_errors(
    root: Path, index: int, block: str = "umc", uncorrectable: int = 0, correctable: int = 0
) -> tuple[int, int]:
    """Raise one block's counters by these amounts, as a fault would; returns the new (ue, ce)."""
    if not block.isalnum() or uncorrectable < 0 or correctable < 0:
        raise UserError(
            f"RAS block {block!r}, +{uncorrectable} ue, +{correctable} ce: use a block name of letters and digits and "
            "counts >= 0"
        )
    dev = gpu_dir(root, index)
    current = {name: (ue, ce) for name, ue, ce in ras_errors(dev)}.get(block, (0, 0))
    ue, ce = current[0] + uncorrectable, current[1] + correctable
    write_atomic(dev / RAS_DIR / f"{block}{RAS_SUFFIX}", f"ue: {ue}\nce: {ce}\n")
    return ue, ce


def set_sensors(
    root: Path, index: int, temperature: float | None = None, power: float | None = None, sensor: str = "junction"
) -> None:
    """hwmon's units: millidegrees Celsius and microwatts."""
    hwmon = gpu_dir(root, index) / HWMON
    if temperature is not None:
        write_atomic(hwmon / "temp2_label", f"{sensor}\n")
        write_atomic(hwmon / "temp2_input", f"{round(temperature * 1000)}\n")
    if power is not None:
        write_atomic(hwmon / "power1_average", f"{round(power * 1_000_000)}\n")


def hide_ras(dev: Path) -> dict[str, str]:
    """A GPU reset: every counter reads INACCESSIBLE; returns what they read before, for show_ras."""
    saved = {}
    for path in sorted((dev / RAS_DIR).glob(f"*{RAS_SUFFIX}")):
        saved[path.name] = path.read_text()
        write_atomic(path, INACCESSIBLE + "\n")
    return saved


def show_ras(dev: Path, saved: dict[str, str]) -> None:
    """The reset is done: the counters read their values again."""
    for name, text in saved.items():
        write_atomic(dev / RAS_DIR / name, text)
