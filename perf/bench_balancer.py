"""The balancer side by side: direct, the hand-run nginx config, mipart's, and a keep-alive front layer (docs/perf.md).

Two engines (fake, 50 tokens/s; or real vLLM on CPU with --vllm), one nginx per variant, all
started once and measured in turn, variants interleaved within each repetition so noise hits
all of them. Variants:
  direct     the client splits its streams over the two engine ports itself (two guidellm
             processes, half the streams each; the short-request client round-robins the ports)
  seed       seed 000's nginx_two_servers.conf, verbatim but for the ports (perf/seed000_nginx.conf)
  mipart     render_nginx's text as the agent writes it (keepalive_timeout 0)
  mipart-ka  the same with keepalive_timeout 75s (short requests and reloads only)
  front      design (a): a front nginx that never reloads, keep-alive to clients, each request to
             the mipart layer (keepalive_timeout 0) over a unix socket on a new connection
Rows: guidellm streams at each level (tokens/s, ratio to direct, TTFT p50/p99, ITL p50, errors),
short non-streaming requests at c=64 (balancer_client.py, keep-alive pool), and --reloads
SIGHUPs with a changed config (an instance toggled `down`, as on a membership change) under
that keep-alive load, counting what the client sees fail. CPU: cores used (CPU s / wall s) by
the client, nginx (masters + workers) and the engines over each measurement.

Run:  PYTHONPATH=agent .venv/bin/python perf/bench_balancer.py [--quick] [--vllm] [-o results.json]
The guidellm venv is mipart bench's (mipart.bench.tool; set XDG_CACHE_HOME to reuse a cached one).
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from balancer_setup import MODEL, Nginx, Procs, front_text, mipart_text, seed_text, start_engines, tree_cpu
from balancer_vllm import start_vllm
from host import machine, workdir

from mipart.bench.drive import Target, run_tool
from mipart.bench.results import Step
from mipart.bench.sweep import Sweep, Tokens
from mipart.bench.tokenizer import word_tokenizer
from mipart.bench.tool import ensure_tool
from mipart.errors import UserError
from mipart.sim.ports import free_block

CLIENT = Path(__file__).with_name("balancer_client.py")
STREAM_VARIANTS = ("direct", "seed", "mipart", "front")
SHORT_VARIANTS = ("direct", "seed", "mipart", "mipart-ka", "front")
RELOAD_VARIANTS = ("mipart", "mipart-ka", "front")


@dataclass(frozen=True)
class Plan:
    levels: tuple[int, ...]
    reps: int
    warmup: float
    duration: float
    short_seconds: float
    reloads: int
    reload_every: float
    tokens: int  # prompt and output tokens of a streamed request


FULL = Plan(
    levels=(8, 64, 512, 1024), reps=3, warmup=5, duration=20, short_seconds=15, reloads=20, reload_every=1.0, tokens=128
)
QUICK = Plan(levels=(64,), reps=1, warmup=1, duration=4, short_seconds=4, reloads=20, reload_every=0.25, tokens=64)
VLLM = Plan(levels=(4,), reps=3, warmup=3, duration=15, short_seconds=10, reloads=20, reload_every=0.5, tokens=64)


class Bench:
    """The engines and every variant's nginx, started once; `targets`/`cpu` per variant."""

    def __init__(self, procs: Procs, tmp: Path, engine_ports: list[int], engine_pids: list[int], listen: list[int]):
        self.engine_ports, self.engine_pids, self.tmp = engine_ports, engine_pids, tmp
        everyone = frozenset(range(len(engine_ports)))
        self.nginx: dict[str, list[Nginx]] = {}
        self.listen: dict[str, int] = {}
        prefixes = {name: tmp / name for name in ("seed", "mipart", "mipart-ka", "back", "front")}
        for path in prefixes.values():
            path.mkdir(mode=0o755)
        self.listen = dict(zip(("seed", "mipart", "mipart-ka", "front"), listen, strict=True))
        self.socket = prefixes["back"] / "back.sock"
        self.texts = {
            "seed": seed_text(self.listen["seed"], engine_ports),
            "mipart": self._mipart(f"127.0.0.1:{self.listen['mipart']}", everyone, prefixes["mipart"], "0"),
            "mipart-ka": self._mipart(f"127.0.0.1:{self.listen['mipart-ka']}", everyone, prefixes["mipart-ka"], "75s"),
            "back": self._mipart(f"unix:{self.socket}", everyone, prefixes["back"], "0"),
        }
        for name in ("seed", "mipart", "mipart-ka", "back"):
            self.nginx[name] = [
                Nginx(procs, prefixes[name], self.texts[name], None if name == "back" else self.listen[name])
            ]
        self.nginx["front"] = [
            Nginx(
                procs,
                prefixes["front"],
                front_text(self.listen["front"], self.socket, prefixes["front"]),
                self.listen["front"],
            ),
            self.nginx["back"][0],
        ]

    def _mipart(self, listen: str, ready: frozenset[int], prefix: Path, keepalive: str) -> str:
        return mipart_text(listen, self.engine_ports, ready, prefix, keepalive, max_seqs=1024)

    def ports(self, variant: str) -> list[int]:
        return self.engine_ports if variant == "direct" else [self.listen[variant]]

    def nginx_cpu(self, variant: str) -> float:
        return sum(n.cpu() for n in self.nginx.get(variant, []))

    def engine_cpu(self) -> float:
        return sum(tree_cpu(pid) for pid in self.engine_pids)

    def reloaded(self, variant: str) -> int:
        return self.nginx["back" if variant == "front" else variant][0].reloads_seen()

    def reloader(self, variant: str, count: int, every: float, done: threading.Event) -> threading.Thread:
        """A thread sending `count` reloads, each with the last instance toggled between ready and `down`."""
        name = "back" if variant == "front" else variant
        target = self.nginx[name][0]
        listen = f"unix:{self.socket}" if variant == "front" else f"127.0.0.1:{self.listen[variant]}"
        keepalive = "75s" if variant == "mipart-ka" else "0"
        everyone = frozenset(range(len(self.engine_ports)))
        texts = [
            self._mipart(listen, everyone - {len(self.engine_ports) - 1}, target.prefix, keepalive),
            self.texts[name],
        ]

        def run() -> None:
            for i in range(count):
                if done.wait(every):
                    return
                target.reload(texts[i % 2])

        return threading.Thread(target=run, daemon=True)


def measured(bench: Bench, variant: str, work):
    """Run `work()`; its result with the cores used by the client (our reaped children), nginx and the engines."""
    before = (
        resource.getrusage(resource.RUSAGE_CHILDREN),
        bench.nginx_cpu(variant),
        bench.engine_cpu(),
        time.monotonic(),
    )
    result = work()
    after = (
        resource.getrusage(resource.RUSAGE_CHILDREN),
        bench.nginx_cpu(variant),
        bench.engine_cpu(),
        time.monotonic(),
    )
    wall = after[3] - before[3]
    client = (after[0].ru_utime + after[0].ru_stime) - (before[0].ru_utime + before[0].ru_stime)
    cores = {"client": client / wall, "nginx": (after[1] - before[1]) / wall, "engines": (after[2] - before[2]) / wall}
    return result, cores


def stream_run(bench: Bench, plan: Plan, variant: str, python: Path, tokenizer: Path, logs: Path) -> dict[int, Step]:
    """One guidellm run per port over all levels (direct: two at once, half the streams each); steps by level."""
    ports = bench.ports(variant)
    share = len(ports)
    levels = tuple(max(1, level // share) for level in plan.levels)
    sweep = Sweep(
        "concurrent",
        tuple(float(x) for x in levels),
        plan.warmup,
        plan.duration,
        Tokens(plan.tokens),
        Tokens(plan.tokens),
        max_concurrency=max(512, max(levels)),
    )
    found: list[tuple[Step, ...]] = [() for _ in ports]

    def one(i: int) -> None:
        found[i] = run_tool(
            python,
            Target(f"http://127.0.0.1:{ports[i]}", MODEL, str(tokenizer), None),
            sweep,
            False,
            logs / f"guidellm-{variant}-{i}.log",
        )

    threads = [threading.Thread(target=one, args=(i,)) for i in range(share)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return {level: merge([steps[k] for steps in found]) for k, level in enumerate(plan.levels)}


def merge(steps: list[Step]) -> Step:
    """Two halves of one load as one step: throughput and counts add up, p50s are averaged, p99s the worse."""
    if len(steps) == 1:
        return steps[0]
    q = {
        name: type(getattr(steps[0], name))(
            p50=statistics.mean(getattr(s, name).p50 for s in steps), p99=max(getattr(s, name).p99 for s in steps)
        )
        for name in ("ttft_ms", "itl_ms", "e2e_ms")
    }
    return Step(
        name=steps[0].name,
        concurrency=sum(s.concurrency or 0 for s in steps),
        rate=None,
        requests=sum(s.requests for s in steps),
        errors=sum(s.errors for s in steps),
        throughput_tokens_per_s=sum(s.throughput_tokens_per_s for s in steps),
        requests_per_s=sum(s.requests_per_s for s in steps),
        **q,
    )


def short_run(ports: list[int], seconds: float, concurrency: int = 64) -> dict:
    argv = [
        sys.executable,
        str(CLIENT),
        *[f"--port={p}" for p in ports],
        "--concurrency",
        str(concurrency),
        "--seconds",
        f"{seconds:g}",
    ]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 120)
    if done.returncode != 0:
        raise SystemExit(f"the short-request client failed: {done.stderr.strip()[-400:]}")
    return json.loads(done.stdout)


def reload_run(bench: Bench, plan: Plan, variant: str) -> dict:
    stop = threading.Event()
    thread = bench.reloader(variant, plan.reloads, plan.reload_every, stop)
    seconds = plan.reload_every * (plan.reloads + 2)
    before = bench.reloaded(variant)
    thread.start()
    try:
        result = short_run(bench.ports(variant), seconds)
    finally:
        stop.set()
        thread.join()
    time.sleep(0.5)  # the last reload's log line
    return {**result, "reloads": plan.reloads, "reloads_logged": bench.reloaded(variant) - before}


def med(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def report(plan: Plan, streams: dict, short: dict, reloads: dict, engines: str) -> str:
    out = [
        f"Engines: {engines}; {machine()}",
        f"Plan: {asdict(plan)}",
        "",
        "| streams | variant | tokens/s | vs direct | TTFT p50 ms | TTFT p99 ms | ITL p50 ms | errors | cores client/nginx/engines |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for level in plan.levels:
        direct = med([s.throughput_tokens_per_s for s, _ in streams[level]["direct"]])
        for variant in STREAM_VARIANTS:
            cells = streams[level][variant]
            tps = med([s.throughput_tokens_per_s for s, _ in cells])
            cores = "/".join(f"{med([c[k] for _, c in cells]):.2f}" for k in ("client", "nginx", "engines"))
            out.append(
                f"| {level} | {variant} | {tps:.0f} | {tps / direct:.3f} | {med([s.ttft_ms.p50 for s, _ in cells]):.1f} | "
                f"{med([s.ttft_ms.p99 for s, _ in cells]):.1f} | {med([s.itl_ms.p50 for s, _ in cells]):.1f} | "
                f"{sum(s.errors for s, _ in cells)} | {cores} |"
            )
    out += [
        "",
        "| short, c=64 | tokens/s (=req/s) | vs direct | latency p50 ms | p99 ms | connections opened | errors | cores client/nginx/engines |",
        "|---|---|---|---|---|---|---|---|",
    ]
    direct = med([r["tokens_per_s"] for r, _ in short["direct"]])
    for variant in SHORT_VARIANTS:
        cells = short[variant]
        tps = med([r["tokens_per_s"] for r, _ in cells])
        cores = "/".join(f"{med([c[k] for _, c in cells]):.2f}" for k in ("client", "nginx", "engines"))
        out.append(
            f"| {variant} | {tps:.0f} | {tps / direct:.3f} | {med([r['latency_ms']['p50'] for r, _ in cells]):.1f} | "
            f"{med([r['latency_ms']['p99'] for r, _ in cells]):.1f} | {med([r['connections_opened'] for r, _ in cells]):.0f} | "
            f"{sum(r['errors'] for r, _ in cells)} |{cores} |"
        )
    out += [
        "",
        "| reloads under keep-alive load | reloads sent / logged by nginx | requests | client-visible failures | what failed | connections opened |",
        "|---|---|---|---|---|---|",
    ]
    for variant, r in reloads.items():
        out.append(
            f"| {variant} | {r['reloads']} / {r['reloads_logged']} | {r['requests']} | {r['errors']} | {json.dumps(r['failures']) if r['failures'] else '-'} | "
            f"{r['connections_opened']} |"
        )
    return "\n".join(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--quick",
        action="store_true",
        help="one level (64 streams; 4 with --vllm), one repetition, short steps: under 2 minutes (plus vLLM's start)",
    )
    parser.add_argument(
        "--vllm",
        action="store_true",
        help="two real vLLM CPU servers (tests/vllm/vllm_env.py's venv and tiny model) instead of fake engines",
    )
    parser.add_argument("-o", "--output", type=Path, help="write every cell's figures here (JSON)")
    args = parser.parse_args()
    if args.quick:
        plan = replace(QUICK, levels=VLLM.levels) if args.vllm else QUICK
    else:
        plan = VLLM if args.vllm else FULL
    python = ensure_tool(lambda line: print(line, file=sys.stderr))
    procs = Procs()
    with workdir() as tmp:
        tmp.chmod(0o755)  # nginx workers (www-data, nobody) reach the unix socket and temp dirs
        base = free_block(8, 10001, 20000)
        engine_ports, listen = [base, base + 1], [base + 2 + i for i in range(4)]
        try:
            if args.vllm:
                engine_pids, tokenizer, engines = start_vllm(procs, engine_ports, tmp, MODEL)
            else:
                engine_pids = start_engines(procs, engine_ports, tps=50, max_seqs=1024, logs=tmp)
                tokenizer, engines = (
                    word_tokenizer(tmp / "tokenizer"),
                    "2 fake engines (mipart.sim.engine, 50 tokens/s, max-num-seqs 1024)",
                )
            bench = Bench(procs, tmp, engine_ports, engine_pids, listen)
            streams = {level: {v: [] for v in STREAM_VARIANTS} for level in plan.levels}
            short = {v: [] for v in SHORT_VARIANTS}
            for rep in range(plan.reps):
                for variant in STREAM_VARIANTS:
                    print(f"rep {rep + 1}/{plan.reps}: {variant} streams {plan.levels}", file=sys.stderr)
                    steps, cores = measured(
                        bench, variant, lambda: stream_run(bench, plan, variant, python, tokenizer, tmp)
                    )
                    for level, step in steps.items():
                        streams[level][variant].append((step, cores))
                for variant in SHORT_VARIANTS:
                    short[variant].append(
                        measured(bench, variant, lambda: short_run(bench.ports(variant), plan.short_seconds))
                    )
            reloads = {}
            for variant in RELOAD_VARIANTS:
                print(f"reloads: {variant}", file=sys.stderr)
                reloads[variant] = reload_run(bench, plan, variant)
        except UserError as exc:  # the load tool failed: its one line, its log kept in the work dir
            raise SystemExit(f"bench_balancer: {exc}") from None
        finally:
            procs.close()
    text = report(plan, streams, short, reloads, engines)
    print(("(--quick: one repetition, short steps; not the figures of record)\n" if args.quick else "") + text)
    if args.output:
        data = {
            "plan": asdict(plan),
            "engines": engines,
            "machine": machine(),
            "reloads": reloads,
            "streams": {
                str(k): {v: [{"step": asdict(s), "cores": c} for s, c in cells] for v, cells in row.items()}
                for k, row in streams.items()
            },
            "short": {v: [{"result": r, "cores": c} for r, c in cells] for v, cells in short.items()},
        }
        args.output.write_text(json.dumps(data, indent=1) + "\n")


if __name__ == "__main__":
    main()
