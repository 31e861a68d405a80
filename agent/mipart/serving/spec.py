"""An instance spec: everything the launcher needs to exec one server.

Its file is the contract between the agent (writer) and the launcher (reader), which
may come from different mipart versions during an upgrade: `file_text` carries
SPEC_VERSION, and a file without one predates versions and is version 1.
The launcher reads only its own version: an older file is refused in one line.
Kept free of profile and GPU imports: `mipart exec` reads it at every instance start.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from mipart import envfile
from mipart.names import CONTAINER_RUNTIMES, instance_unit

# 2: the server listens on a unix socket (`socket`), no longer on a loopback port.
SPEC_VERSION = 2
OPTIONAL_FIELDS = ("env_files", "cache_owner", "visible_devices_env")
CONTAINER_HF_HOME = "/root/.cache/huggingface"  # where a container sees the model cache


class SpecVersionError(ValueError):
    """A spec file of a format this mipart does not read (written by another version)."""


@dataclass(frozen=True)
class InstanceSpec:
    number: int
    service: str
    model: str
    served_model_name: str
    logical_gpus: tuple[int, ...]
    physical_gpus: tuple[int, ...]
    render_nodes: tuple[str, ...]
    socket: str  # the unix socket it listens on, in a directory only it and nginx's workers enter
    runtime: str
    argv: tuple[str, ...]
    env: tuple[tuple[str, str], ...]
    user: str | None  # None: root, which a container client needs for the daemon socket
    hf_home: str
    # Written only when set, so a spec without them digests as before they existed.
    env_files: tuple[str, ...] = ()  # root-only files the launcher passes on at each start (secrets)
    cache_owner: str | None = None  # who owns hf_home when the launcher creates it; None: `user`
    # A native server's visible-devices variable, which the launcher sets from the live topology
    # (serving/visible.py); None: `env` carries it (a container's 0..k-1).
    visible_devices_env: str | None = None

    @property
    def unit(self) -> str:
        return instance_unit(self.number)

    @property
    def devices(self) -> tuple[str, ...]:
        return ("/dev/kfd", *self.render_nodes)

    @property
    def address(self) -> str:
        """As nginx's upstream `server` and the status API name it."""
        return f"unix:{self.socket}"

    @property
    def container(self) -> bool:
        return self.runtime in CONTAINER_RUNTIMES

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        for key in OPTIONAL_FIELDS:
            if data[key] == self.__dataclass_fields__[key].default:
                del data[key]
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> InstanceSpec:
        fields = {**data}
        for key in ("logical_gpus", "physical_gpus", "render_nodes", "argv", "env_files"):
            if key in fields:
                fields[key] = tuple(fields[key])
        fields["env"] = tuple(tuple(pair) for pair in fields["env"])
        return cls(**fields)

    def file_text(self) -> str:
        """The spec file the agent writes and `mipart exec` reads: the fields and the format's version."""
        return json.dumps({"version": SPEC_VERSION, **self.to_json()}, indent=1, sort_keys=True) + "\n"

    @classmethod
    def from_file_text(cls, text: str) -> InstanceSpec:
        """Raises SpecVersionError for another version; ValueError, TypeError or KeyError for a bad file."""
        fields = {**json.loads(text)}
        version = fields.pop("version", 1)
        if version != SPEC_VERSION:
            raise SpecVersionError(f"version {version!r}, but this mipart reads version {SPEC_VERSION}")
        return cls.from_json(fields)

    def env_file_text(self) -> str:
        """The env file a container client reads (`--env-file`); raises envfile.EnvFileError for a value it cannot
        carry."""
        return envfile.render(self.env)

    def digest(self) -> str:
        """Changes exactly when the running server would differ."""
        return hashlib.sha256(json.dumps(self.to_json(), sort_keys=True).encode()).hexdigest()[:16]


def read_spec_files(directory: Path) -> dict[int, InstanceSpec]:
    """The spec files in `directory` (a run dir's instances/), by number; one unreadable is left out."""
    specs = {}
    for path in sorted(directory.glob("*.json")):
        if not (path.stem.isascii() and path.stem.isdigit()):
            continue
        try:
            specs[int(path.stem)] = InstanceSpec.from_file_text(path.read_text())
        except (OSError, ValueError, TypeError, KeyError):
            continue
    return specs
