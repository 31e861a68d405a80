"""mipart_plan's controller side: O(src) read here, byte for byte, and sent as O(content), as for mipart_profile."""

from __future__ import annotations

from ansible_collections.mipart.host.plugins.action.mipart_profile import ActionModule as ProfileText


class ActionModule(ProfileText):
    """The same as mipart_profile's: the planned text must be the file's exact bytes, as its digest is."""
