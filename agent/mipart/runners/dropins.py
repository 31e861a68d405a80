"""The per-instance drop-ins on disk (runners/devices.py says what they hold).

Written from the spec files, which the agent writes for a whole batch before it starts
any instance of it: the batch's first start brings every drop-in up to date and the
others find nothing to do, so systemd reloads once per batch, not once per instance.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from mipart.fsutil import write_atomic
from mipart.names import INSTANCE_PATTERN, instance_number
from mipart.runners.devices import DROPIN_NAME, DropinError, dropin_path, dropin_text
from mipart.serving.spec import InstanceSpec, read_spec_files


@dataclass
class Dropins:
    run_dir: Path
    unit_dir: Path
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def sync(self, reload: Callable[[], object]) -> dict[int, str]:
        """Write changed drop-ins, remove those whose spec is gone, then call `reload` once if
        anything changed. Returns, per instance, why it has no drop-in (a spec value refused);
        an unreadable spec is left to the launcher, which names it when the unit starts."""
        with self._lock:
            changed, refused = False, {}
            specs = self._specs()
            for number, spec in specs.items():
                try:
                    changed |= _put(dropin_path(self.unit_dir, number), dropin_text(spec))
                except DropinError as exc:
                    refused[number] = str(exc)
                    changed |= self.remove(number)
            for number in self._present() - specs.keys():
                changed |= self.remove(number)
            if changed:
                reload()
            return refused

    def remove(self, number: int) -> bool:
        path = dropin_path(self.unit_dir, number)
        try:
            path.unlink()
        except FileNotFoundError:
            return False
        try:
            path.parent.rmdir()
        except OSError:
            pass  # another drop-in of someone else's is still there
        return True

    def _specs(self) -> dict[int, InstanceSpec]:
        return read_spec_files(self.run_dir / "instances")

    def _present(self) -> set[int]:
        found = set()
        for path in self.unit_dir.glob(f"{INSTANCE_PATTERN}.d/{DROPIN_NAME}"):
            number = instance_number(path.parent.name.removesuffix(".d"))
            if number is not None:
                found.add(number)
        return found


def _put(path: Path, text: str) -> bool:
    """True when the file had to change."""
    try:
        if path.read_text() == text:
            return False
    except FileNotFoundError:
        pass
    write_atomic(path, text)
    return True
