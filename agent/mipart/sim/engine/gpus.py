"""The fake engine's GPUs, as a ROCm server sees them where it runs: on a simulated host only.

ROCm enumerates the GPUs whose render nodes this process may open, in KFD node order
(gpu/rocm_order.py, with the simulator's device cgroup: sim/devices.py); then
ROCR_VISIBLE_DEVICES, HIP_VISIBLE_DEVICES and CUDA_VISIBLE_DEVICES each pick, by index, from
what the one before left. A real vLLM given a value that selects nothing, or a GPU that is
another instance's, fails to start or runs on the wrong GPU; the fake engine refuses to
start in one line instead, and reports what it saw (its log, GET /mipart/devices) so tests
can check the index the launcher resolved.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mipart.gpu import rocm_order
from mipart.names import DEVICES_VAR, SYSFS_ROOT_VAR
from mipart.sim import devices

# ROCr filters first, HIP indexes what ROCr left (HIP takes CUDA_VISIBLE_DEVICES as its own name).
VISIBLE_ORDER = ("ROCR_VISIBLE_DEVICES", "HIP_VISIBLE_DEVICES", "CUDA_VISIBLE_DEVICES")


class GpuRefused(Exception):
    """The visible-devices value would not give this server its own GPUs."""


@dataclass(frozen=True)
class EngineGpus:
    enumerated: tuple[str, ...]  # render nodes ROCm enumerates here, in its order
    visible: dict[str, str]  # the visible-devices variables set, as given
    selected: tuple[str, ...]  # what the server runs on
    own: tuple[str, ...]  # the instance's own render nodes (DEVICES_VAR)

    def report(self) -> dict[str, Any]:
        return {
            "enumerated": list(self.enumerated),
            "visible": self.visible,
            "selected": list(self.selected),
            "own": list(self.own),
        }

    def line(self) -> str:
        return (
            f"GPUs: ROCm enumerates {_listed(self.enumerated)}; {_given(self.visible)} selects {_listed(self.selected)}"
        )


def engine_gpus(environ: Mapping[str, str]) -> EngineGpus | None:
    """None off a simulated host; raises GpuRefused (or UserError from the walk) to refuse to start."""
    root = environ.get(SYSFS_ROOT_VAR, "")
    if DEVICES_VAR not in environ or not root:
        return None
    base = Path(root).resolve()
    enumerated = rocm_order.render_nodes(base, devices.opener(base, environ))
    given = (p for p in environ[DEVICES_VAR].split(":") if "/dri/" in p)
    own = tuple(sorted("/" + str(Path(p).relative_to(base)) for p in given))
    selected = enumerated
    visible = {name: environ[name] for name in VISIBLE_ORDER if name in environ}
    for name, value in visible.items():
        selected = _select(selected, name, value, enumerated)
    if not selected:
        raise GpuRefused(f"{_given(visible)} selects no GPU (ROCm enumerates {_listed(enumerated)} here)")
    foreign = [device for device in selected if device not in own]
    if foreign:
        raise GpuRefused(
            f"{_given(visible)} selects {', '.join(foreign)}, not this instance's own GPU ({_listed(own)}); ROCm "
            f"enumerates {_listed(enumerated)} here"
        )
    return EngineGpus(enumerated, visible, selected, own)


def _select(before: tuple[str, ...], name: str, value: str, enumerated: tuple[str, ...]) -> tuple[str, ...]:
    picked = []
    for word in (w.strip() for w in value.split(",") if w.strip()):
        if not (word.isascii() and word.isdigit()) or int(word) >= len(before):
            raise GpuRefused(
                f"{name}={value}: {word!r} is no index of the {len(before)} GPUs it picks from (ROCm enumerates "
                f"{_listed(enumerated)} here)"
            )
        picked.append(before[int(word)])
    return tuple(picked)


def _given(visible: dict[str, str]) -> str:
    return " ".join(f"{k}={v}" for k, v in visible.items()) or "no visible-devices variable"


def _listed(found: tuple[str, ...]) -> str:
    return ", ".join(found) or "none"
