"""What the agent's process never loads: OpenSSL, and decompressors for bodies it never reads.

The agent speaks no TLS (its API is a unix socket or loopback, its engines unix sockets) and
hashes only its own few kilobytes (config generations, spec digests). Python's `ssl` and
`_hashlib` modules map libssl and libcrypto: 4.5 MB resident, a ninth of the agent's budget
(docs/perf.md). asyncio and aiohttp import `ssl` only if they can and run without it; hashlib
falls back to CPython's built-in SHA-2. aiohttp imports brotli when it is installed, for
compressed bodies the agent's read-only API never accepts. So `mipart agent` refuses these
modules before it imports anything that would load them.
"""

from __future__ import annotations

import sys

REFUSED = ("ssl", "_ssl", "_hashlib", "brotli", "brotlicffi")


def refuse_unused_modules() -> None:
    """Make each REFUSED module's import fail (ImportError) in this process, unless already loaded."""
    for name in REFUSED:
        sys.modules.setdefault(name, None)  # None: "this import fails", as the import system reads it
