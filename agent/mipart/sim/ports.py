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


def free_block(count: int, low: int = 10000) -> int:
    """The first port of `count` consecutive free ports, chosen at random to avoid parallel runs."""
    rng = random.Random()
    for _ in range(500):
        start = rng.randrange(low, EPHEMERAL_START - count)
        if all(port_free(p) for p in range(start, start + count)):
            return start
    raise RuntimeError(f"no {count} consecutive free loopback ports below {EPHEMERAL_START}")
