"""A native server's visible-devices value, resolved when it starts: pure, no I/O.

mipart's logical GPU numbers are its own (gpu.modes); ROCm's device index is the position of
a GPU among those ROCm enumerates where the server runs (gpu.rocm_order), which a device
cgroup and every runtime switch change. The launcher enumerates from the server's own
process and user, then asks this for the value: the positions of the spec's render nodes,
in the spec's order (the order vLLM uses them in).
"""

from __future__ import annotations

from mipart.errors import UserError


def visible_value(number: int, own: tuple[str, ...], enumerated: tuple[str, ...]) -> str:
    """Raises UserError when ROCm would not see one of the instance's own GPUs from here."""
    missing = [device for device in own if device not in enumerated]
    if missing:
        seen = ", ".join(enumerated) or "none"
        raise UserError(
            f"instance {number}: ROCm does not see its GPU {', '.join(missing)} from here (it sees {seen}): the "
            "partition is gone or its render node is not allowed to the unit; check `mipart partition plan`, then "
            "restart mipart-agent so it writes the instance's spec and device drop-in again"
        )
    return ",".join(str(enumerated.index(device)) for device in own)
