"""Instance answers for probe tests: what mipart.unixhttp.InstanceClient returns (a Reply)."""

from __future__ import annotations

import json

from mipart.unixhttp import Reply


def Response(status: int, text: str = "", data=None) -> Reply:  # noqa: N802 - reads as the answer it stands for
    body = json.dumps(data).encode() if data is not None else text.encode()
    return Reply(status, {}, body)
