"""What every mipart.host module's documentation says alike: where it runs and how it finds mipart."""

from __future__ import annotations


class ModuleDocFragment:
    DOCUMENTATION = r"""
requirements:
  - mipart installed on the host (C(mipart) on C(PATH)).
attributes:
  platform:
    platforms: posix
    support: full
    description: Any host mipart runs on.
notes:
  - The module runs C(mipart) with the task's environment. On a host whose C(/etc/default/mipart)
    points the units at a simulated host (C(MIPART_SYSFS_ROOT)), give the same value in the play's
    C(environment) keyword.
"""

    # The modules that read a profile and ask the agent about it (mipart status).
    AGENT = r"""
options:
  profile:
    description:
      - The profile, on the host. The agent reads C(/etc/mipart/profile.yaml) (its unit's C(--profile)).
    type: path
    default: /etc/mipart/profile.yaml
  api:
    description:
      - Where the agent answers (C(host:port), C(http://host:port) or a unix socket path), for
        C(mipart status --api); by default the profile's C(api.listen).
    type: str
"""
