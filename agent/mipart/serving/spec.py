"""An instance spec: everything the launcher needs to exec one server.

Kept free of profile and GPU imports: `mipart exec` reads it at every instance start.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from mipart.names import instance_unit

INSTANCE_HOST = "127.0.0.1"  # instances are reached through nginx only


@dataclass(frozen=True)
class InstanceSpec:
    number: int
    service: str
    model: str
    served_model_name: str
    logical_gpus: tuple[int, ...]
    physical_gpus: tuple[int, ...]
    render_nodes: tuple[str, ...]
    port: int
    runtime: str
    argv: tuple[str, ...]
    env: tuple[tuple[str, str], ...]
    user: str | None  # None: root, which a container client needs for the daemon socket
    hf_home: str

    @property
    def unit(self) -> str:
        return instance_unit(self.number)

    @property
    def devices(self) -> tuple[str, ...]:
        return ("/dev/kfd", *self.render_nodes)

    @property
    def address(self) -> str:
        return f"{INSTANCE_HOST}:{self.port}"

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict) -> "InstanceSpec":
        fields = {**data}
        for key in ("logical_gpus", "physical_gpus", "render_nodes", "argv"):
            fields[key] = tuple(fields[key])
        fields["env"] = tuple(tuple(pair) for pair in fields["env"])
        return cls(**fields)

    def digest(self) -> str:
        """Changes exactly when the running server would differ."""
        return hashlib.sha256(json.dumps(self.to_json(), sort_keys=True).encode()).hexdigest()[:16]
