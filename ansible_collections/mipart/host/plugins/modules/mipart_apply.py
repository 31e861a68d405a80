#!/usr/bin/python
"""Have mipart-agent load the profile on disk and wait until the host serves it, or fail in the agent's words."""

from __future__ import annotations

DOCUMENTATION = r"""
module: mipart_apply
short_description: Have mipart-agent load its profile and wait until the host serves it
description:
  - Checks the profile with the host's C(mipart validate) first; a refused profile applies nothing.
  - When the agent already runs this profile (its digest in C(/v1/status)) nothing is sent to it;
    otherwise C(systemctl reload mipart-agent), or C(systemctl start mipart-agent) when it does not run.
  - Then reads C(mipart status --json) until the agent reports this profile's digest loaded, no
    repartition running, the partitions matching and every instance in rotation (ready, or degraded
    which still serves; an instance whose generation probe fails leaves rotation).
  - Fails at once when the agent refuses the profile (a new C(profile_error)), and after O(timeout)
    with everything the agent states as wrong, in its own words (C(profile_error), the partition,
    repartition, reconcile, units, files and nginx errors, and each instance out of rotation with
    its C(last_error)).
version_added: 1.0.0
author: mipart authors (@mipart)
extends_documentation_fragment:
  - mipart.host.host
  - mipart.host.host.agent
options:
  timeout:
    description:
      - Seconds to wait for the host to serve the profile. Model loads take minutes on real hosts.
    type: int
    default: 900
  poll:
    description:
      - Seconds between two reads of the agent's status.
    type: float
    default: 1.0
requirements:
  - mipart's units under systemd.
attributes:
  check_mode:
    support: full
    description: Reports whether the agent would be reloaded or started, and sends it nothing.
  diff_mode:
    support: none
    description: It writes no file to show a difference of.
notes:
  - A change of C(gpus:) repartitions while serving (docs/repartition.md); a memory partition change
    reloads the GPU driver, which takes the host out of service until it is done.
seealso:
  - module: mipart.host.mipart_profile
  - module: mipart.host.mipart_plan
"""

EXAMPLES = r"""
- name: Load the new profile and wait until every instance serves it
  mipart.host.mipart_apply:
    timeout: 1800
"""

RETURN = r"""
action:
  description: What was asked of the agent (C(reload), C(start)) or C(none) when it already ran this profile.
  returned: always
  type: str
  sample: reload
digest:
  description: The digest of the profile the host now serves.
  returned: always
  type: str
waited:
  description: Seconds from the reload (or start) until the host served the profile.
  returned: success and not check mode
  type: float
in_rotation:
  description: How many instances are in rotation.
  returned: success and not check mode
  type: int
waiting_on:
  description: What the host had not done yet when the time ran out.
  returned: failure after the timeout
  type: list
  elements: str
agent_says:
  description: Every problem the agent stated in its last report, one a line.
  returned: failure
  type: list
  elements: str
"""

import time

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.mipart.host.plugins.module_utils.cli import AGENT_UNIT, DEFAULT_PROFILE, Mipart
from ansible_collections.mipart.host.plugins.module_utils.reports import (
    IN_ROTATION,
    agent_words,
    answering,
    instances,
    loaded_digest,
    pending,
    refusal,
)


def main():
    module = AnsibleModule(
        argument_spec={
            "profile": {"type": "path", "default": DEFAULT_PROFILE},
            "api": {"type": "str"},
            "timeout": {"type": "int", "default": 900},
            "poll": {"type": "float", "default": 1.0},
        },
        supports_check_mode=True,
    )
    mipart, profile, api = Mipart(module), module.params["profile"], module.params["api"]
    valid, problems = mipart.validate(profile)
    if valid is None:
        module.fail_json(msg=f"mipart refuses {profile}, nothing was applied: {problems[0]}", problems=problems)
    digest = valid["digest"]
    before = mipart.status(profile, api) if mipart.agent_active() else None
    if before is None:
        action = "start"
    else:
        action = "none" if loaded_digest(before) == digest else "reload"
    if module.check_mode:
        module.exit_json(changed=action != "none", action=action, digest=digest)
    started = time.monotonic()
    if action != "none":
        mipart.agent(action)
    earlier_error = before["status"]["profile_error"] if before is not None and answering(before) else ""
    report = _wait(module, mipart, digest, earlier_error)
    served = [i for i in instances(report) if i["state"] in IN_ROTATION]
    module.exit_json(
        changed=action != "none",
        action=action,
        digest=digest,
        waited=round(time.monotonic() - started, 1),
        in_rotation=len(served),
    )


def _wait(module, mipart, digest, earlier_error):
    """The first report that shows the host serving DIGEST; fails the module on a refusal or the timeout."""
    profile, api = module.params["profile"], module.params["api"]
    deadline = time.monotonic() + module.params["timeout"]
    while True:
        report = mipart.status(profile, api)
        refused = refusal(report, earlier_error) if loaded_digest(report) != digest else ""
        if refused:
            module.fail_json(
                msg=f"{AGENT_UNIT} refused {profile} and keeps the profile it ran: {refused}",
                agent_says=agent_words(report),
            )
        waits = pending(report, digest)
        if not waits:
            return report
        if time.monotonic() >= deadline:
            words = agent_words(report)
            module.fail_json(
                msg=f"the host did not serve profile {digest[:12]} within {module.params['timeout']}s: "
                + "; ".join(words or waits),
                waiting_on=waits,
                agent_says=words,
            )
        time.sleep(module.params["poll"])


if __name__ == "__main__":
    main()
