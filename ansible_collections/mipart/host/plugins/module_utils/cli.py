"""Run mipart's own commands on the host and read their --json output.

The modules learn everything through these commands, never by reading mipart's files or API by
hand: a host answers Ansible exactly as it answers an operator at its shell, and a new mipart's
readers come with it.
"""

from __future__ import annotations

import json

AGENT_UNIT = "mipart-agent.service"
DEFAULT_PROFILE = "/etc/mipart/profile.yaml"
# `mipart status` exits 3 when it read the host but some instances are not in rotation (docs/verbs.md).
STATUS_NOT_READY = 3


class Mipart:
    """The `mipart` and `systemctl` commands of one host, failing the module in one line on error."""

    def __init__(self, module):
        self.module = module
        self.binary = module.get_bin_path("mipart", required=True)

    def _run(self, args):
        return self.module.run_command([self.binary, *args])

    def _json(self, args, ok=(0,)):
        rc, out, err = self._run(args)
        if rc not in ok:
            self.module.fail_json(msg=f"mipart {' '.join(args)}: {_first_line(err or out)}", rc=rc, stderr=err)
        try:
            return json.loads(out)
        except ValueError:
            self.module.fail_json(msg=f"mipart {' '.join(args)} printed no JSON: {_first_line(out)}", rc=rc)

    def validate(self, path):
        """(what `mipart validate --json` says of a valid profile, []) or (None, its problems, one a line)."""
        rc, out, err = self._run(["validate", "--json", path])
        if rc != 0:
            return None, err.splitlines() or [f"mipart validate exited {rc}"]
        return json.loads(out), []

    def plan(self, profile):
        """`mipart plan --json`: the partition plan, the instances and the upstreams the profile asks of this host."""
        return self._json(["plan", "--json", "--profile", profile])

    def status(self, profile, api=None):
        """`mipart status --json`: the agent's own report, or the units' when the agent does not answer."""
        args = ["status", "--json", "--profile", profile] + (["--api", api] if api else [])
        return self._json(args, ok=(0, STATUS_NOT_READY))

    def agent_active(self):
        return self.module.run_command([self._systemctl(), "is-active", "--quiet", AGENT_UNIT])[0] == 0

    def agent(self, verb):
        """`systemctl VERB mipart-agent` (start waits for its READY=1; reload sends SIGHUP)."""
        rc, out, err = self.module.run_command([self._systemctl(), verb, AGENT_UNIT])
        if rc != 0:
            self.module.fail_json(msg=f"systemctl {verb} {AGENT_UNIT}: {_first_line(err or out)}", rc=rc)

    def _systemctl(self):
        return self.module.get_bin_path("systemctl", required=True)


def _first_line(text):
    lines = [line for line in text.splitlines() if line.strip()]
    return lines[0] if lines else "(no output)"
