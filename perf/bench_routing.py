"""Routing policies on real vLLM: session affinity against least_conn, on a shared-prefix workload (docs/routing.md).

Two real vLLM CPU servers (tests/vllm/vllm_env.py's cached venv and tiny model, prefix caching
on) behind one real nginx running render_nginx's text for a service of those two ports, its
`routing:` set per run. Each session (a conversation) has a long prefix of its own (a system
prompt and history, ~300 tokens) and sends `--turns` requests, each the prefix plus a short new
question, with its id in X-Session-Id; turns go in waves (every session's turn k, `--concurrency`
at a time, then turn k + 1). Runs alternate policies, each with fresh prefixes, so no run
profits from another's cache.

Per run: the prefix cache hit rate over both servers (the increase of vLLM's own counters
vllm:prefix_cache_hits_total / vllm:prefix_cache_queries_total, in tokens, from /metrics),
and TTFT p50 / p90 as the client sees it through nginx (first streamed token). Figures are
medians over `--reps` runs of each policy.

Run:  PYTHONPATH=agent .venv/bin/python perf/bench_routing.py [--quick] [-o results.json]
Full: 16 sessions x 8 turns, concurrency 4, 3 repetitions (768 requests): about 10-20 minutes on 2 cores, most of it
prefill on CPU; --quick is 4 sessions x 3 turns, 1 repetition (about 2 minutes with vLLM's start).
"""

from __future__ import annotations

import argparse
import http.client
import json
import random
import shutil
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

from balancer_setup import Nginx, Procs, back_text, profile_of
from balancer_vllm import start_vllm
from host import machine

from mipart.prometheus import metric_sum
from mipart.sim.ports import free_block

MODEL = "mipart-tiny"
HEADER = "X-Session-Id"
POLICIES = {"least_conn": "least_conn", "affinity": f"{{affinity: {{header: {HEADER}}}}}"}
HITS, QUERIES = "vllm:prefix_cache_hits_total", "vllm:prefix_cache_queries_total"
# Words the tiny model's tokenizer was trained on (tests/vllm/vllm_env.py): about one token each.
WORDS = [
    "mipart",
    "runs",
    "one",
    "vLLM",
    "server",
    "per",
    "logical",
    "GPU",
    "behind",
    "nginx",
    "the",
    "quick",
    "brown",
    "fox",
    "jumps",
    "over",
    "lazy",
    "dog",
    "again",
    "partitions",
    "memory",
    "all",
    "on",
    "hello",
    "how",
    "are",
    "you",
    "today",
    "I",
    "am",
    "fine",
    "thank",
    "tokens",
    "stream",
    "by",
    "as",
    "server",
    "sent",
    "events",
]
REQUEST_TIMEOUT = 120.0


@dataclass(frozen=True)
class Plan:
    sessions: int
    turns: int
    concurrency: int
    reps: int
    prefix_words: int
    max_tokens: int


FULL = Plan(sessions=16, turns=8, concurrency=4, reps=3, prefix_words=260, max_tokens=4)
QUICK = Plan(sessions=4, turns=3, concurrency=2, reps=1, prefix_words=260, max_tokens=4)


@dataclass(frozen=True)
class Run:
    policy: str
    hit_rate: float  # prefix cache hits / queries, in tokens, over both servers
    ttft_p50_ms: float
    ttft_p90_ms: float
    requests: int
    errors: int


def nginx_text(listen: int, ports: list[int], routing: str, prefix: Path) -> str:
    """What the agent writes for one service of these two servers under this routing (render_nginx), listening
    on the service's own port as well (`direct`): the back layer picks the instance, the front plays no part."""
    profile = profile_of(f"127.0.0.1:{listen}", ports, routing=routing)
    return back_text(profile, ports, frozenset(range(len(ports))), prefix, direct=True)


def counters(ports: list[int]) -> tuple[float, float]:
    """(hits, queries) of the prefix cache summed over the servers, from their /metrics."""
    hits = queries = 0.0
    for port in ports:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        conn.request("GET", "/metrics")
        text = conn.getresponse().read().decode()
        conn.close()
        found = metric_sum(text, HITS), metric_sum(text, QUERIES)
        if None in found:
            raise SystemExit(f"vLLM on port {port} exports no {HITS} / {QUERIES}: is prefix caching on?")
        hits, queries = hits + found[0], queries + found[1]
    return hits, queries


def first_token_ms(listen: int, session: str, prompt: str, max_tokens: int) -> float | None:
    """Milliseconds to the first streamed token through nginx; None when the request failed."""
    conn = http.client.HTTPConnection("127.0.0.1", listen, timeout=REQUEST_TIMEOUT)
    started = time.perf_counter()
    try:
        body = json.dumps(
            {"model": MODEL, "prompt": prompt, "max_tokens": max_tokens, "stream": True, "temperature": 0}
        )
        conn.request("POST", "/v1/completions", body, {"Content-Type": "application/json", HEADER: session})
        response = conn.getresponse()
        if response.status != 200:
            response.read()
            return None
        first = None
        for line in response:
            if first is None and line.startswith(b"data: {"):
                first = (time.perf_counter() - started) * 1000
        return first
    except OSError:
        return None
    finally:
        conn.close()


def prefixes(plan: Plan, salt: str) -> dict[str, str]:
    """Each session's own long prefix: no two sessions (nor two runs) share a first block."""
    out = {}
    for i in range(plan.sessions):
        rng = random.Random(f"{salt}/{i}")
        out[f"{salt}-s{i}"] = f"session {salt} {i}: " + " ".join(rng.choice(WORDS) for _ in range(plan.prefix_words))
    return out


def one_run(plan: Plan, policy: str, salt: str, listen: int, ports: list[int]) -> Run:
    sessions = prefixes(plan, salt)
    hits0, queries0 = counters(ports)
    ttfts, errors = [], 0
    with ThreadPoolExecutor(plan.concurrency) as pool:
        for turn in range(plan.turns):
            asks = [(sid, f"{prefix} question {turn}: how are you today?") for sid, prefix in sessions.items()]
            for took in pool.map(lambda ask: first_token_ms(listen, ask[0], ask[1], plan.max_tokens), asks):
                if took is None:
                    errors += 1
                else:
                    ttfts.append(took)
    hits1, queries1 = counters(ports)
    cuts = statistics.quantiles(ttfts, n=10) if len(ttfts) > 1 else ttfts * 9
    return Run(
        policy,
        (hits1 - hits0) / max(queries1 - queries0, 1.0),
        statistics.median(ttfts) if ttfts else float("nan"),
        cuts[8] if cuts else float("nan"),
        len(ttfts) + errors,
        errors,
    )


def prompt_tokens(listen: int, prompt: str) -> int:
    conn = http.client.HTTPConnection("127.0.0.1", listen, timeout=REQUEST_TIMEOUT)
    conn.request(
        "POST",
        "/v1/completions",
        json.dumps({"model": MODEL, "prompt": prompt, "max_tokens": 1}),
        {"Content-Type": "application/json"},
    )
    response = conn.getresponse()
    data = json.loads(response.read())
    conn.close()
    if response.status != 200:
        raise SystemExit(f"a warm-up request was refused ({response.status}): {data}")
    return data["usage"]["prompt_tokens"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--quick", action="store_true", help="4 sessions x 3 turns, one repetition: proves the bench works"
    )
    parser.add_argument("-o", "--output", type=Path, help="also write the runs as JSON here")
    args = parser.parse_args()
    plan = QUICK if args.quick else FULL
    start = free_block(3, low=10001, high=20000)
    listen, ports = start, [start + 1, start + 2]
    procs, failed = Procs(), True
    work = Path(tempfile.mkdtemp(prefix="bench-routing-"))
    try:
        _, _, engines = start_vllm(procs, ports, work, MODEL)
        prefix = work / "nginx"
        nginx = Nginx(procs, prefix, nginx_text(listen, ports, "least_conn", prefix), listen)
        sample = prefixes(plan, "warmup")
        tokens = max(prompt_tokens(listen, p + " question 0: how are you today?") for p in sample.values())
        print(
            f"{engines}; {plan.sessions} sessions x {plan.turns} turns, concurrency {plan.concurrency}, prompts of ~{tokens} tokens, "
            f"{plan.max_tokens} tokens out; {machine()}",
            flush=True,
        )
        runs = []
        for rep in range(plan.reps):
            for policy, routing in POLICIES.items():
                nginx.reload(nginx_text(listen, ports, routing, prefix))
                time.sleep(1.0)  # the new workers take over; the old ones have no request to finish
                run = one_run(plan, policy, f"r{rep}-{policy}", listen, ports)
                print(
                    f"  rep {rep + 1} {policy:<10} hit rate {run.hit_rate:6.1%}  TTFT p50 {run.ttft_p50_ms:7.1f} ms  "
                    f"p90 {run.ttft_p90_ms:7.1f} ms  ({run.requests} requests, {run.errors} errors)",
                    flush=True,
                )
                runs.append(run)
        print("| policy | prefix cache hit rate | TTFT p50 | TTFT p90 | errors |\n|---|---|---|---|---|")
        for policy in POLICIES:
            mine = [r for r in runs if r.policy == policy]
            median = lambda key: statistics.median(getattr(r, key) for r in mine)  # noqa: E731
            print(
                f"| {policy} | {median('hit_rate'):.1%} | {median('ttft_p50_ms'):.0f} ms | {median('ttft_p90_ms'):.0f} ms | "
                f"{sum(r.errors for r in mine)} |"
            )
        if args.output:
            args.output.write_text(
                json.dumps({"plan": asdict(plan), "engines": engines, "runs": [asdict(r) for r in runs]}, indent=2)
            )
        failed = any(r.errors for r in runs)
        return 1 if failed else 0
    finally:
        procs.close()
        if failed:
            print(f"vLLM and nginx logs kept in {work}", file=sys.stderr)
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
