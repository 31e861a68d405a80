"""An instance's files as `mipart render` writes them, for a one-service profile on a
simulated DPX/NPS2 host: what `mipart exec N` then reads (with MIPART_RUN_DIR pointed there)."""

from __future__ import annotations

import json
from pathlib import Path

from conftest import mipart


def render_run_dir(tmp_path: Path, sim_env: dict, chat: str) -> Path:
    """CHAT: the fields of service `chat`, as YAML flow text. Instances run as root, cache in tmp_path."""
    profile = tmp_path / "profile.yaml"
    profile.write_text(
        "version: 1\ngpus: {compute: DPX, memory: NPS2}\nservices:\n"
        f"  chat: {{model: org/m, listen: 8040, {chat}}}\n"
        f"instances: {{user: root, hf_home: {json.dumps(str(tmp_path / 'hf'))}}}\n"
    )
    out = tmp_path / "root"
    done = mipart("render", "--root", out, "--profile", profile, env=sim_env)
    assert done.returncode == 0, done.stderr
    return out / "run/mipart"
