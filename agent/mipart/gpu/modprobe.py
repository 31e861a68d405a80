"""The amdgpu.user_partt_mode the NEXT driver load reads (docs/partitioning.md, "Driver reload").

On every load the driver sets each GPU's compute mode from this parameter, and a mode that
does not run under the new memory mode makes GPU init fail: the GPUs do not come back. What
counts is what `modprobe amdgpu` passes, not the loaded module's value: the `options amdgpu`
lines of the modprobe.d directories (*.conf in name order; a name in an earlier directory
hides the same name in a later one), then the kernel command line's `amdgpu.user_partt_mode=`
(kmod's libkmod-config.c: kmod_config_new parses the files, then kmod_config_parse_kcmdline);
the last value given wins. Paths are the host's, through `host` (a simulated root maps them).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from mipart.gpu.modes import USER_PARTT_MODE
from mipart.values import LoadMode

CONF_DIRS = (
    "/etc/modprobe.d",
    "/run/modprobe.d",
    "/usr/local/lib/modprobe.d",
    "/lib/modprobe.d",
    "/usr/lib/modprobe.d",
)
CMDLINE = "/proc/cmdline"
PARAMETER = "user_partt_mode"
MODULE = "amdgpu"
DEFAULT = LoadMode("AUTO", "")  # the driver's default: -2, AUTO
UINT_SPAN = 2**32  # the parameter is declared uint: AUTO (-2) may be written 4294967294


def load_mode(host: Callable[[str], Path]) -> LoadMode:
    """The mode the next load sets and where it is set (DEFAULT when nowhere)."""
    found = DEFAULT
    for path in _conf_files(host):
        for number, line in _lines(path):
            words = line.split()
            if words[:2] == ["options", MODULE]:
                for word in words[2:]:
                    value = _value(word)
                    if value is not None:
                        found = LoadMode(_name(value), f"{path}:{number}")
    cmdline = host(CMDLINE)
    for word in _read(cmdline).split():
        if word.startswith(f"{MODULE}."):
            value = _value(word[len(MODULE) + 1 :])
            if value is not None:
                found = LoadMode(_name(value), f"the kernel command line ({cmdline})")
    return found


def name_of(number: int) -> str:
    """A user_partt_mode value as a mode name ("AUTO", "DPX", ...); the number as text when the driver knows none."""
    if number >= UINT_SPAN // 2:
        number -= UINT_SPAN
    names = {value: name for name, value in USER_PARTT_MODE.items()}
    return names.get(number, str(number))


def _name(text: str) -> str:
    try:
        return name_of(int(text, 0))
    except ValueError:
        return text


def _value(word: str) -> str | None:
    """VALUE of `user_partt_mode=VALUE` (the kernel reads - and _ alike in parameter names)."""
    key, equals, value = word.partition("=")
    return value if equals and key.replace("-", "_") == PARAMETER else None


def _conf_files(host: Callable[[str], Path]) -> list[Path]:
    chosen: dict[str, Path] = {}
    for directory in CONF_DIRS:
        try:
            names = sorted(p.name for p in host(directory).iterdir() if p.name.endswith(".conf"))
        except OSError:
            continue
        for name in names:
            chosen.setdefault(name, host(directory) / name)
    return [chosen[name] for name in sorted(chosen)]


def _lines(path: Path) -> list[tuple[int, str]]:
    """Numbered lines, comments dropped, a line ending in a backslash joined to the next."""
    out: list[tuple[int, str]] = []
    pending, start = "", 0
    for number, raw in enumerate(_read(path).splitlines(), 1):
        line = raw.split("#", 1)[0]
        if not pending:
            start = number
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        out.append((start, pending + line))
        pending = ""
    return out


def _read(path: Path) -> str:
    try:
        return path.read_text(errors="replace")
    except OSError:
        return ""
