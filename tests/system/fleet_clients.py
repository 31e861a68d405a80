"""Run as `python fleet_clients.py PORT MODEL LIMIT` in the fleet's namespace: mipart's ClientLoop
against 127.0.0.1:PORT until SIGTERM or LIMIT seconds, then its counts as JSON on stdout."""

from __future__ import annotations

import json
import signal
import sys
import threading

from mipart.sim.clients import ClientLoop

if __name__ == "__main__":
    port, model, limit = int(sys.argv[1]), sys.argv[2], float(sys.argv[3])
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    with ClientLoop(port, model, limit=limit) as loop:
        stop.wait(limit)
    print(json.dumps(loop.seen))
