"""Free loopback ports for demos, tests and benchmarks.

Kept below the kernel's ephemeral range (32768+): a port there can be taken by any
outgoing connection just when a restarted instance needs to bind it again.
"""

from __future__ import annotations

import random
import socket

EPHEMERAL_START = 32768


def port_free(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket() as sock:
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def free_block(count: int, low: int = 10000, high: int = EPHEMERAL_START) -> int:
    """The first port of `count` consecutive free ports in [low, high), at random so parallel runs rarely meet."""
    rng = random.Random()
    for _ in range(500):
        start = rng.randrange(low, high - count)
        if all(port_free(p) for p in range(start, start + count)):
            return start
    raise RuntimeError(f"no {count} consecutive free loopback ports in {low}-{high - 1}")
