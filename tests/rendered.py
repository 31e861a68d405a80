"""An instance's files as the agent writes them, for a one-service profile on a simulated DPX/NPS2
host: what `mipart exec N` then reads (with MIPART_RUN_DIR pointed at the directory returned)."""

from __future__ import annotations

import json
from pathlib import Path

from conftest import mipart

from mipart.daemon.specfiles import make_launcher_dirs, write_specs
from mipart.names import RUN_DIR_VAR, SERVING_DIR_VAR
from mipart.serving.spec import InstanceSpec


def render_run_dir(tmp_path: Path, sim_env: dict, chat: str, instances: str = "") -> Path:
    """CHAT: the fields of service `chat`, as YAML flow text. Instances run as root, cache in tmp_path,
    unless INSTANCES (the `instances:` mapping, as YAML flow text) says otherwise.

    The specs are the ones `mipart plan` shows (their sockets under sim_env's serving dir), written
    into a run dir of the test's own by the agent's own writer, which also makes the serving dir's
    sockets/ and launched/."""
    default = f"{{user: root, hf_home: {json.dumps(str(tmp_path / 'hf'))}}}"
    profile = tmp_path / "profile.yaml"
    profile.write_text(
        "version: 1\ngpus: {compute: DPX, memory: NPS2}\nservices:\n"
        f"  chat: {{model: org/m, listen: 8040, {chat}}}\n"
        f"instances: {instances or default}\n"
    )
    run = tmp_path / "run-dir"
    done = mipart("plan", "--json", "--profile", profile, env={**sim_env, RUN_DIR_VAR: str(run)})
    assert done.returncode == 0, done.stderr
    specs = {s["number"]: InstanceSpec.from_json(s) for s in json.loads(done.stdout)["instances"]}
    assert make_launcher_dirs(Path(sim_env[SERVING_DIR_VAR])) == "" and write_specs(run, specs) == ""
    return run
