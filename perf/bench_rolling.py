"""Rolling repartition (issue 21): time from SIGHUP to full serving, and each service's least ready
capacity while a change of 1, 2 and 8 GPUs rolls, against what the planner predicted.

A simulated 8 x MI300X host in CPX/NPS1 serves 64 fake instances (1 s model load) through the
real agent (`--runner process`) and a real nginx. Each round edits `gpus:` (some GPUs to QPX,
then back to CPX: no driver reload, so the change rolls one GPU a step), asks `mipart plan --json`
for the rollout, sends SIGHUP (what `systemctl reload mipart-agent` does) and samples
/v1/status's per-service `ready` every 0.1 s until the change is done and every instance serves.
It prints per round:

  total      SIGHUP -> the agent's `repartition.done`, then every instance of the new layout ready
             in nginx.conf and the status API and one 200 through nginx (the harness's wait_ready)
  steps      the planned steps (one GPU each) and the `repartition.step` pairs the agent logged
  predicted  the planner's least capacity over the steps (instances in rotation), per service
  measured   the least `ready` /v1/status reported from SIGHUP to full serving, per service

A bounded client loop runs through nginx for every round; its answers are counted (goal: only 200).

Run: .venv/bin/python perf/bench_rolling.py
"""

from __future__ import annotations

import json
import re
import threading
import time

from host import MODEL, BenchHost, machine, workdir

from mipart.sim.clients import ClientLoop

SAMPLE = 0.1  # seconds between /v1/status reads
# (GPUs changed, overrides for the target layout): to QPX and back, CPX has 8 instances a GPU, QPX 4
ROUNDS = (
    (1, "[{select: [0], compute: QPX}]"),
    (1, None),
    (2, "[{select: [0, 1], compute: QPX}]"),
    (2, None),
    (8, "[{select: [0, 1, 2, 3, 4, 5, 6, 7], compute: QPX}]"),
    (8, None),
)


class Sampler:
    """The least `ready` per service the status API reports while it runs (a thread, bounded by stop())."""

    def __init__(self, host: BenchHost):
        self.host, self.least, self.reads = host, {}, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                services = self.host.api_get("/v1/status", timeout=2)["services"]
            except (OSError, ValueError, KeyError):
                services = []  # an answer missed is no sample, not zero
            for s in services:
                self.least[s["name"]] = min(self.least.get(s["name"], s["ready"]), s["ready"])
            self.reads += bool(services)
            self._stop.wait(SAMPLE)

    def __enter__(self) -> Sampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)


def run_round(host: BenchHost, changed: int, overrides: str | None) -> dict:
    offset = len(host.log_text())
    host.write_profile(overrides=overrides)
    planned = json.loads(host.mipart("plan", "--profile", str(host.profile), "--json"))
    rollout, count = planned["rollout"], len(planned["instances"])
    assert rollout["mode"] == "rolling", rollout["reason"]
    services = {name for step in rollout["steps"] for name in step["capacity"]}
    predicted = {name: min(step["capacity"][name] for step in rollout["steps"]) for name in services}
    with Sampler(host) as sampler:
        started = time.monotonic()
        host.hup()  # a change to fewer instances passes through the final count mid-way: the change's end first
        host.wait_for(lambda: "event='repartition.done'" in host.log_text()[offset:], timeout=900, what="the change")
        host.wait_ready(count, timeout=300)
        total = time.monotonic() - started
    logged = re.findall(r"event='repartition\.step' phase='end'.*? gpus='(\d+)'", host.log_text()[offset:])
    return {
        "changed": changed,
        "to": "QPX" if overrides else "CPX",
        "instances": count,
        "total": total,
        "planned": [step["gpus"] for step in rollout["steps"]],
        "logged": [[int(g)] for g in logged],
        "predicted": predicted,
        "measured": dict(sampler.least),
        "reads": sampler.reads,
    }


def main() -> None:
    print(machine())
    with workdir() as tmp:
        host = BenchHost(tmp, compute="CPX", memory="NPS1")
        try:
            host.start_agent()
            host.wait_ready(64, timeout=600)
            print(
                f"{'GPUs':>4} {'to':>4} {'inst':>4} {'total':>8} {'steps':>9} {'predicted':>10} {'measured':>9} reads"
            )
            with ClientLoop(host.listen, MODEL, limit=3600, pause=0.02) as clients:
                for changed, overrides in ROUNDS:
                    row = run_round(host, changed, overrides)
                    steps = f"{len(row['planned'])}/{len(row['logged'])}" + (
                        "" if row["planned"] == row["logged"] else "!"
                    )
                    for name in sorted(row["predicted"]):
                        print(
                            f"{row['changed']:>4} {row['to']:>4} {row['instances']:>4} {row['total']:>6.2f} s "
                            f"{steps:>9} {name + ' ' + str(row['predicted'][name]):>10} "
                            f"{row['measured'].get(name, -1):>9} {row['reads']}",
                            flush=True,
                        )
                    time.sleep(1.0)
        finally:
            host.close()
    print(f"answers through nginx meanwhile: {dict(sorted(clients.seen.items()))} (goal: only 200)")
    print("steps: planned/logged (! when the agent's steps differ from the plan's)")


if __name__ == "__main__":
    main()
