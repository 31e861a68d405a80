#!/usr/bin/python
"""Put a mipart profile on a host, checked there by `mipart validate` before it replaces the old one."""

from __future__ import annotations

DOCUMENTATION = r"""
module: mipart_profile
short_description: Put a mipart profile on a host, validated there first
description:
  - Writes the profile that C(mipart-agent) reads (by default C(/etc/mipart/profile.yaml)).
  - The new text is written to a temporary file beside the profile and checked with the host's own
    C(mipart validate) before it replaces the old one, so a profile this host's mipart refuses never
    lands; the task then fails with mipart's problems, one a line, naming the destination.
  - The old profile is backed up, and the new one is renamed into place (atomic), mode C(0640),
    owned by root, as the mipart package installs it.
  - Nothing is applied. Run M(mipart.host.mipart_apply) to have the agent load it.
  - Profile values appear in C(--diff) output; keep secrets in C(env_files), as docs/security.md says.
version_added: 1.0.0
author: mipart authors (@mipart)
extends_documentation_fragment:
  - mipart.host.host
options:
  content:
    description:
      - The profile's text. Exactly one of O(content) and O(src) is given.
    type: str
  src:
    description:
      - A profile file on the controller (looked up like M(ansible.builtin.copy)'s C(src)), read
        byte for byte by this module's action plugin and sent as O(content).
    type: path
  dest:
    description:
      - Where the profile goes on the host.
    type: path
    default: /etc/mipart/profile.yaml
  backup:
    description:
      - Keep the old profile beside the new one, under a name with a timestamp, when it changes.
    type: bool
    default: true
attributes:
  check_mode:
    support: full
    description: Validates the new text in a temporary directory and reports what would change.
  diff_mode:
    support: full
    description: The old and new text of the profile.
seealso:
  - module: mipart.host.mipart_plan
  - module: mipart.host.mipart_apply
"""

EXAMPLES = r"""
- name: Put the fleet's profile on every host
  mipart.host.mipart_profile:
    src: profiles/chat.yaml

- name: Write a profile given inline
  mipart.host.mipart_profile:
    content: |
      version: 1
      gpus: {compute: DPX, memory: NPS2}
      services:
        chat: {model: org/model, listen: 8040, runtime: docker, image: rocm/vllm:latest}
"""

RETURN = r"""
dest:
  description: Where the profile is.
  returned: always
  type: str
  sample: /etc/mipart/profile.yaml
digest:
  description: The profile's digest, as C(mipart validate --json) gives it and C(/v1/status) reports it once loaded.
  returned: always
  type: str
  sample: 3f0a5e...
services:
  description: The services the profile declares.
  returned: always
  type: list
  elements: str
  sample: [chat, code]
backup_file:
  description: The copy of the old profile, when one was made.
  returned: changed and O(backup) and an old profile existed
  type: str
  sample: /etc/mipart/profile.yaml.12345.2026-12-01@10:00:00~
"""

import os
import tempfile

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.mipart.host.plugins.module_utils.cli import DEFAULT_PROFILE, Mipart

MODE = 0o640  # as debian/rules installs it: the profile may carry values meant for the servers only


def main():
    module = AnsibleModule(
        argument_spec={
            "content": {"type": "str"},
            "src": {"type": "path"},
            "dest": {"type": "path", "default": DEFAULT_PROFILE},
            "backup": {"type": "bool", "default": True},
        },
        required_one_of=[("content", "src")],
        mutually_exclusive=[("content", "src")],
        supports_check_mode=True,
    )
    if module.params["src"] is not None:
        module.fail_json(
            msg="src is read on the controller by the action plugin; call the module as mipart.host.mipart_profile"
        )
    dest, content = module.params["dest"], module.params["content"]
    before = _read(dest)
    staged = _stage(module, dest, content)
    try:
        report = _validated(module, staged, dest)
        result = {"dest": dest, "digest": report["digest"], "services": report["services"]}
        if module._diff:
            text = before.decode("utf-8", "replace") if before is not None else ""
            result["diff"] = {"before": text, "after": content, "before_header": dest, "after_header": dest}
        changed = before != content.encode()
        if changed and not module.check_mode:
            if module.params["backup"] and before is not None:
                result["backup_file"] = module.backup_local(dest)
            module.atomic_move(staged, dest)
            staged = None
        if before is not None or not module.check_mode:
            changed = module.set_owner_if_different(dest, "root", changed)
            changed = module.set_group_if_different(dest, "root", changed)
            changed = module.set_mode_if_different(dest, MODE, changed)
        module.exit_json(changed=changed, **result)
    finally:
        if staged is not None and os.path.exists(staged):
            os.unlink(staged)


def _read(path):
    try:
        with open(path, "rb") as f:
            return f.read()
    except FileNotFoundError:
        return None


def _stage(module, dest, content):
    """CONTENT in a temp file beside DEST (so the rename is atomic), or in the module's tmpdir in check mode."""
    where = module.tmpdir if module.check_mode else os.path.dirname(dest)
    if not os.path.isdir(where):
        module.fail_json(msg=f"{where} does not exist: install mipart on this host first")
    fd, path = tempfile.mkstemp(prefix=".profile.", suffix=".yaml", dir=where)
    with os.fdopen(fd, "wb") as f:
        os.fchmod(f.fileno(), MODE)
        f.write(content.encode())
        f.flush()
        os.fsync(f.fileno())
    return path


def _validated(module, staged, dest):
    """What `mipart validate --json` says of the staged text; the task fails with its problems, named as DEST."""
    report, problems = Mipart(module).validate(staged)
    if report is None:
        problems = [line.replace(staged, dest) for line in problems]
        module.fail_json(
            msg=f"{dest}: mipart refuses this profile, the old one is kept: {problems[0]}", problems=problems
        )
    return report


if __name__ == "__main__":
    main()
