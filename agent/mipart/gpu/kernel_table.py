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

PARTITION_CONFIG = "compute_partition_config"
XCP_CONFIG = f"{PARTITION_CONFIG}/xcp_config"
# Another reader selecting a mode between our write and our read: retry that mode this often.
PREVIEW_TRIES = 3


def read_table(
    device: Path, write: Callable[[str, str], None], xcc_count: int, memory_modes: tuple[str, ...]
) -> pair_tables.PairTable:
    """`write(attribute, value)` writes one of the device's files (the backend's own write)."""
    config = device / PARTITION_CONFIG
    if not config.is_dir():
        return fallback(xcc_count, memory_modes, f"no {PARTITION_CONFIG}/: an older kernel")
    supported = attrs.mode_list(config / "supported_xcp_configs")
    selected = attrs.word(config / "xcp_config")
    pairs: dict[str, tuple[str, ...]] = {}
    try:
        for mode in supported:
            memory = _preview(config, write, mode)
            if memory:
                pairs[mode] = memory
    except PermissionError as exc:
        return fallback(
            xcc_count,
            memory_modes,
            f"{XCP_CONFIG} not writable ({exc.strerror}): run as root to read the kernel's table",
        )
    finally:
        _restore(config, write, selected)
    return pair_tables.PairTable(pairs, pair_tables.FROM_KERNEL)


def fallback(xcc_count: int, memory_modes: tuple[str, ...], reason: str) -> pair_tables.PairTable:
    pairs = pair_tables.pairs_for(pair_tables.MAINLINE, xcc_count, memory_modes)
    return pair_tables.PairTable(pairs, f"{pair_tables.FROM_FALLBACK} ({reason})")


def _preview(config: Path, write: Callable[[str, str], None], mode: str) -> tuple[str, ...]:
    for _ in range(PREVIEW_TRIES):
        _write(config, write, mode)
        memory = attrs.mode_list(config / "supported_nps_configs")
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
