"""Reading sysfs attribute files: each failure is one UserError that names the file."""

from __future__ import annotations

import errno
from pathlib import Path

from mipart.errors import UserError

# During a GPU reset amdgpu refuses its partition attributes with EPERM (docs/partitioning.md).
RESETTING = "GPU reset in progress (the kernel refuses it until the reset is done); retry after it finishes"


class Vanished(UserError):
    """The file went away while mipart read it (ENOENT, or ENODEV from an attribute of a removed
    kobject): the kernel rebuilds KFD's node directories on every partition change."""


def read(path: Path) -> str:
    try:
        return path.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise read_error(path, exc) from exc


def read_error(path: Path, exc: OSError | UnicodeDecodeError) -> UserError:
    """The one line for a file that cannot be read, by the errno the kernel gave."""
    if isinstance(exc, OSError) and exc.errno in (errno.ENOENT, errno.ENODEV):
        return Vanished(f"{path}: cannot read: {exc.strerror}")
    if isinstance(exc, OSError) and exc.errno == errno.EPERM:
        return UserError(f"{path}: cannot read: {RESETTING}")
    reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
    return UserError(f"{path}: cannot read: {reason}")


def _corrupt(path: Path, text: str) -> UserError:
    return UserError(f"{path}: unexpected content {text.strip()[:60]!r}")


def word(path: Path) -> str:
    text = read(path)
    value = text.strip().upper()
    if not value.isalnum():
        raise _corrupt(path, text)
    return value


def integer(path: Path, base: int = 10) -> int:
    text = read(path)
    try:
        return int(text.strip(), base)
    except ValueError:
        raise _corrupt(path, text) from None


def hex_number(path: Path) -> int:
    return integer(path, 16)


def mode_list(path: Path) -> tuple[str, ...]:
    """`SPX, DPX, QPX, CPX` -> ("SPX", ...); `Not supported` -> ()."""
    text = read(path)
    if text.strip().lower() == "not supported":
        return ()
    modes = tuple(m.strip().upper() for m in text.replace(",", " ").split())
    if not all(m.isalnum() for m in modes):
        raise _corrupt(path, text)
    return modes


def properties(path: Path, required: tuple[str, ...]) -> dict[str, int]:
    """A KFD `properties` file (`key value` lines) that must carry the `required` keys."""
    text = read(path)
    props = {}
    for line in text.splitlines():
        parts = line.split()
        if not parts:
            continue
        try:
            key, value = parts
            props[key] = int(value)
        except ValueError:
            raise _corrupt(path, line) from None
    for key in required:
        if key not in props:
            raise UserError(f"{path}: no {key} line")
    return props


def pci_address(bdf: str, path: Path) -> tuple[int, int, int, int]:
    """`0000:05:00.0` -> (domain, bus, device, function)."""
    try:
        domain, bus, rest = bdf.split(":")
        device, function = rest.split(".")
        return int(domain, 16), int(bus, 16), int(device, 16), int(function, 16)
    except ValueError:
        raise UserError(f"{path}: not a PCI address: {bdf!r}") from None
