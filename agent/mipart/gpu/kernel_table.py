"""Reading one GPU's pair table from the kernel: compute_partition_config/ (docs/partitioning.md).

`xcp_config` only selects which compute mode `supported_nps_configs` describes (a
preview; the partition stays). So the table is read by selecting each mode of
`supported_xcp_configs` in turn, and the selection is put back afterwards, as amd-smi's
`partition --accelerator` does. Where the directory is missing (older kernels), or the
preview may not be written (not root), the mainline rules stand in, and the table says so.
"""

from __future__ import annotations

import errno
from collections.abc import Callable
from pathlib import Path

from mipart.errors import UserError
from mipart.gpu import attrs, pair_tables
from mipart.gpu.parts import GC943

PARTITION_CONFIG = "compute_partition_config"
XCP_CONFIG = f"{PARTITION_CONFIG}/xcp_config"
NPS_CONFIGS = "supported_nps_configs"
# Another reader selecting a mode between our write and our read: retry that mode this often.
PREVIEW_TRIES = 3


def read_table(
    device: Path,
    write: Callable[[str, str], None],
    xcc_count: int,
    memory_modes: tuple[str, ...],
    gc: tuple[int, int, int] = GC943,
) -> pair_tables.PairTable:
    """`write(attribute, value)` writes one of the device's files (the backend's own write);
    `memory_modes`: the GPU's own (available_memory_partition); `gc`: its graphics core's version."""
    config = device / PARTITION_CONFIG
    if not config.is_dir():
        reason = f"no {PARTITION_CONFIG}/: an older kernel, whose rules are those from before 6.16"
        return fallback(pair_tables.MAINLINE_BEFORE_6_16, xcc_count, memory_modes, gc, reason)
    supported = attrs.mode_list(config / "supported_xcp_configs")
    if not (config / NPS_CONFIGS).exists():
        # amdgpu_xcp_cfg_sysfs_init makes it only where the platform can switch NPS: not on an APU
        # (MI300A) nor in an SR-IOV VF. There every mode runs under the one memory mode there is.
        return pair_tables.PairTable(dict.fromkeys(supported, memory_modes), pair_tables.FROM_KERNEL)
    selected = attrs.word(config / "xcp_config")
    pairs: dict[str, tuple[str, ...]] = {}
    try:
        for mode in supported:
            memory = _preview(config, write, mode)
            if memory:
                pairs[mode] = memory
    except PermissionError as exc:
        reason = f"{XCP_CONFIG} not writable ({exc.strerror}): run as root to read the kernel's table"
        return fallback(pair_tables.MAINLINE, xcc_count, memory_modes, gc, reason)
    finally:
        _restore(config, write, selected)
    return pair_tables.PairTable(pairs, pair_tables.FROM_KERNEL)


def fallback(
    rule_set: str, xcc_count: int, memory_modes: tuple[str, ...], gc: tuple[int, int, int], reason: str
) -> pair_tables.PairTable:
    pairs = pair_tables.pairs_for(rule_set, xcc_count, memory_modes, gc)
    return pair_tables.PairTable(pairs, f"{pair_tables.FROM_FALLBACK} ({reason})")


def _preview(config: Path, write: Callable[[str, str], None], mode: str) -> tuple[str, ...]:
    for _ in range(PREVIEW_TRIES):
        _write(config, write, mode)
        memory = attrs.mode_list(config / NPS_CONFIGS)
        if attrs.word(config / "xcp_config") == mode:
            return memory
    raise UserError(
        f"{config / 'xcp_config'} kept changing while mipart read the partition table "
        "(another process reads it too, e.g. amd-smi); rerun when it is done"
    )


def _restore(config: Path, write: Callable[[str, str], None], selected: str) -> None:
    try:
        if attrs.word(config / "xcp_config") != selected:
            _write(config, write, selected)
    except (PermissionError, UserError):
        pass  # nothing was changed that needs undoing, or the error above says why


def _write(config: Path, write: Callable[[str, str], None], mode: str) -> None:
    try:
        write(XCP_CONFIG, mode)
    except OSError as exc:
        if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):  # not root, or /sys read-only here
            raise PermissionError(exc.errno, exc.strerror) from exc
        raise UserError(f"{config / 'xcp_config'}: writing {mode} failed: {exc.strerror or exc}") from exc
