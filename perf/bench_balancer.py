"""The balancer side by side: direct, one nginx with keep-alive, and mipart's two layers (docs/perf.md).

Two engines (fake, 50 tokens/s; or real vLLM on CPU with --vllm), one nginx per variant, all
started once and measured in turn, variants interleaved within each repetition so noise hits
all of them. Variants:
  direct     the client splits its load over the two engine ports itself (two guidellm
             processes, half the streams each; the short-request client round-robins the ports)
  single-ka  one nginx serving the clients itself with keep-alive (keepalive_timeout 75s): the
             back's text as the agent writes it, listening on the port too (the reference)
  mipart     mipart's two layers as the agent writes them: the front (nginx/front.py, keep-alive
             to clients) passes each request over a unix socket, on connections it keeps, to the
             back (nginx/conf.py), which picks the engine
Rows: guidellm streams at each level (tokens/s, ratio to direct, TTFT p50/p99, ITL p50, errors),
short non-streaming requests at each short concurrency (balancer_client.py, keep-alive pool), and
--reloads SIGHUPs with a changed config (an instance toggled `down`, as on a membership change)
under keep-alive load, short requests and streams, counting what the client sees fail and the
connections it opened. CPU: cores used (CPU s / wall s) by the client, nginx (masters + workers)
and the engines over each measurement.

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

from balancer_setup import MODEL, Nginx, Procs, layer_texts, single_text, start_engines, tree_cpu
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
STREAM_VARIANTS = ("direct", "mipart")
SHORT_VARIANTS = ("direct", "single-ka", "mipart")
RELOAD_VARIANTS = ("single-ka", "mipart")


@dataclass(frozen=True)
class Plan:
    levels: tuple[int, ...]
    reps: int
    warmup: float
    duration: float
    short_levels: tuple[int, ...]  # concurrencies of the short-request rows
    short_seconds: float
    reloads: int
    reload_every: float
    reload_loads: tuple[tuple[str, int], ...]  # ("short" | "streams", concurrency) under the reloads
    tokens: int  # prompt and output tokens of a streamed request


FULL = Plan(
    levels=(8, 64, 512, 1024),
    reps=3,
    warmup=5,
    duration=20,
    short_levels=(64, 256),
    short_seconds=15,
    reloads=20,
    reload_every=1.0,
    reload_loads=(("short", 256), ("streams", 64)),
    tokens=128,
)
QUICK = replace(FULL, levels=(64,), reps=1, warmup=1, duration=4, short_seconds=4, reload_every=0.25, tokens=64)
VLLM = replace(
    FULL, levels=(4,), warmup=3, duration=15, short_levels=(64,), short_seconds=10, reload_every=0.5, tokens=64
)
STREAM_TOKENS = 64  # output tokens of a stream under the reloads: 1.3 s at 50 tokens/s


class Bench:
    """The engines and every variant's nginx, started once; `ports`/`nginx_cpu` per variant."""

    def __init__(self, procs: Procs, tmp: Path, engine_ports: list[int], engine_pids: list[int], listen: list[int]):
        self.engine_ports, self.engine_pids, self.tmp = engine_ports, engine_pids, tmp
        everyone = frozenset(range(len(engine_ports)))
        self.listen = dict(zip(("single-ka", "mipart"), listen, strict=True))
        self.prefixes = {name: tmp / name for name in ("single-ka", "back", "front")}
        for path in self.prefixes.values():
            path.mkdir(mode=0o755)
        back, front = self.texts(everyone)
        self.single = Nginx(procs, self.prefixes["single-ka"], self.single_text(everyone), self.listen["single-ka"])
        self.back = Nginx(procs, self.prefixes["back"], back, None)
        self.front = Nginx(procs, self.prefixes["front"], front, self.listen["mipart"])
        self.nginx = {"single-ka": [self.single], "mipart": [self.front, self.back]}

    def single_text(self, ready: frozenset[int]) -> str:
        return single_text(
            f"127.0.0.1:{self.listen['single-ka']}", self.engine_ports, ready, self.prefixes["single-ka"], 1024
        )

    def texts(self, ready: frozenset[int]) -> tuple[str, str]:
        """The two layers' texts for `ready`; the front's never changes with it."""
        listen = f"127.0.0.1:{self.listen['mipart']}"
        return layer_texts(listen, self.engine_ports, ready, self.prefixes["back"], self.prefixes["front"], 1024)

    def ports(self, variant: str) -> list[int]:
        return self.engine_ports if variant == "direct" else [self.listen[variant]]

    def nginx_cpu(self, variant: str) -> float:
        return sum(n.cpu() for n in self.nginx.get(variant, []))

    def engine_cpu(self) -> float:
        return sum(tree_cpu(pid) for pid in self.engine_pids)

    def reloaded(self, variant: str) -> int:
        """SIGHUPs the variant's reloading nginx logged: the single one, or mipart's back."""
        return (self.single if variant == "single-ka" else self.back).reloads_seen()

    def reloader(self, variant: str, count: int, every: float, done: threading.Event) -> threading.Thread:
        """A thread sending `count` reloads, each with the last instance toggled between ready and `down`:
        to the single nginx, or to mipart's back (the front is never reloaded on membership)."""
        everyone = frozenset(range(len(self.engine_ports)))
        flipped = everyone - {len(self.engine_ports) - 1}
        if variant == "single-ka":
            target, texts = self.single, [self.single_text(flipped), self.single_text(everyone)]
        else:
            target, texts = self.back, [self.texts(flipped)[0], self.texts(everyone)[0]]

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


def client_run(ports: list[int], seconds: float, concurrency: int, stream: bool = False) -> dict:
    """balancer_client.py: short completions (or streams of STREAM_TOKENS) on one keep-alive pool."""
    argv = [
        sys.executable,
        str(CLIENT),
        *[f"--port={p}" for p in ports],
        "--concurrency",
        str(concurrency),
        "--seconds",
        f"{seconds:g}",
        *(["--stream", "--max-tokens", str(STREAM_TOKENS)] if stream else []),
    ]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 120)
    if done.returncode != 0:
        raise SystemExit(f"the load client failed: {done.stderr.strip()[-400:]}")
    return json.loads(done.stdout)


def reload_run(bench: Bench, plan: Plan, variant: str, load: str, concurrency: int) -> dict:
    stop = threading.Event()
    thread = bench.reloader(variant, plan.reloads, plan.reload_every, stop)
    seconds = plan.reload_every * (plan.reloads + 2)
    before = bench.reloaded(variant)
    thread.start()
    try:
        result = client_run(bench.ports(variant), seconds, concurrency, stream=load == "streams")
    finally:
        stop.set()
        thread.join()
    time.sleep(0.5)  # the last reload's log line
    return {**result, "reloads": plan.reloads, "reloads_logged": bench.reloaded(variant) - before}


def med(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def cores_cell(cells: list) -> str:
    return "/".join(f"{med([c[k] for _, c in cells]):.2f}" for k in ("client", "nginx", "engines"))


def report(plan: Plan, streams: dict, short: dict, reloads: dict, engines: str) -> str:
    out = [
        f"Engines: {engines}; {machine()}",
        f"Plan: {asdict(plan)}",
        "",
        "| streams | variant | tokens/s | vs direct | TTFT p50 ms | TTFT p50 - direct ms | TTFT p99 ms | ITL p50 ms | errors "
        "| cores client/nginx/engines |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for level in plan.levels:
        direct = streams[level]["direct"]
        direct_tps, direct_ttft = (
            med([s.throughput_tokens_per_s for s, _ in direct]),
            med([s.ttft_ms.p50 for s, _ in direct]),
        )
        for variant in STREAM_VARIANTS:
            cells = streams[level][variant]
            tps, ttft = med([s.throughput_tokens_per_s for s, _ in cells]), med([s.ttft_ms.p50 for s, _ in cells])
            out.append(
                f"| {level} | {variant} | {tps:.0f} | {tps / direct_tps:.3f} | {ttft:.1f} | {ttft - direct_ttft:+.1f} | "
                f"{med([s.ttft_ms.p99 for s, _ in cells]):.1f} | {med([s.itl_ms.p50 for s, _ in cells]):.1f} | "
                f"{sum(s.errors for s, _ in cells)} | {cores_cell(cells)} |"
            )
    out += [
        "",
        "| short | variant | req/s | vs direct | latency p50 ms | p99 ms | connections opened | errors "
        "| cores client/nginx/engines |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for level in plan.short_levels:
        direct = med([r["requests_per_s"] for r, _ in short[level]["direct"]])
        for variant in SHORT_VARIANTS:
            cells = short[level][variant]
            rate = med([r["requests_per_s"] for r, _ in cells])
            out.append(
                f"| c={level} | {variant} | {rate:.0f} | {rate / direct:.3f} | "
                f"{med([r['latency_ms']['p50'] for r, _ in cells]):.1f} | {med([r['latency_ms']['p99'] for r, _ in cells]):.1f} | "
                f"{med([r['connections_opened'] for r, _ in cells]):.0f} | {sum(r['errors'] for r, _ in cells)} | "
                f"{cores_cell(cells)} |"
            )
    out += [
        "",
        "| reloads under keep-alive load | variant | reloads sent / logged by nginx | requests | client-visible failures "
        "| what failed | connections opened |",
        "|---|---|---|---|---|---|---|",
    ]
    for (load, variant), r in reloads.items():
        out.append(
            f"| {load} | {variant} | {r['reloads']} / {r['reloads_logged']} | {r['requests']} | {r['errors']} | "
            f"{json.dumps(r['failures']) if r['failures'] else '-'} | {r['connections_opened']} |"
        )
    return "\n".join(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--quick",
        action="store_true",
        help="one level (64 streams; 4 with --vllm), one repetition, short steps, reloads 4 a second",
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
        tmp.chmod(0o755)  # nginx workers (www-data) reach the back's unix socket and the temp dirs
        base = free_block(8, 10001, 20000)
        engine_ports, listen = [base, base + 1], [base + 2, base + 3]
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
            short = {level: {v: [] for v in SHORT_VARIANTS} for level in plan.short_levels}
            for rep in range(plan.reps):
                for variant in STREAM_VARIANTS:
                    print(f"rep {rep + 1}/{plan.reps}: {variant} streams {plan.levels}", file=sys.stderr)
                    steps, cores = measured(
                        bench, variant, lambda: stream_run(bench, plan, variant, python, tokenizer, tmp)
                    )
                    for level, step in steps.items():
                        streams[level][variant].append((step, cores))
                for level in plan.short_levels:
                    for variant in SHORT_VARIANTS:
                        short[level][variant].append(
                            measured(
                                bench, variant, lambda: client_run(bench.ports(variant), plan.short_seconds, level)
                            )
                        )
            reloads = {}
            for load, concurrency in plan.reload_loads:
                for variant in RELOAD_VARIANTS:
                    print(f"reloads: {variant}, {load} at c={concurrency}", file=sys.stderr)
                    reloads[(f"{load}, c={concurrency}", variant)] = reload_run(bench, plan, variant, load, concurrency)
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
            "reloads": [{"load": load, "variant": variant, **r} for (load, variant), r in reloads.items()],
            "streams": {
                str(k): {v: [{"step": asdict(s), "cores": c} for s, c in cells] for v, cells in row.items()}
                for k, row in streams.items()
            },
            "short": {
                str(k): {v: [{"result": r, "cores": c} for r, c in cells] for v, cells in row.items()}
                for k, row in short.items()
            },
        }
        args.output.write_text(json.dumps(data, indent=1) + "\n")


if __name__ == "__main__":
    main()
