"""The back's kept connections to the instances: its text as the agent writes it against the same text keeping
fewer (`keepalive N`, 16 by default: the 8 an instance it kept before), short requests only, interleaved.

Two fake engines (50 tokens/s, max-num-seqs 1024), as in bench_balancer.py, and four nginx setups started
once: the single keep-alive nginx and mipart's two layers, each with the back's `keepalive` as written and
as N. Each repetition measures `direct` and every setup in turn at each concurrency (balancer_client.py,
one keep-alive pool); the table gives medians, the ratio to direct and the cores used by the client, nginx
and the engines.

Run:  PYTHONPATH=agent .venv/bin/python perf/bench_back_keepalive.py [--kept 16] [--reps 4] [--seconds 12]
"""

from __future__ import annotations

import argparse
import re
import statistics
import sys
from pathlib import Path

from balancer_setup import Nginx, Procs, layer_texts, single_text, start_engines
from bench_balancer import Bench, client_run, cores_cell, measured
from host import machine, workdir

from mipart.sim.ports import free_block

KEPT = re.compile(r"keepalive \d+;")


class Setups(Bench):
    """Bench's engines, with one nginx setup per (variant, back text): ports and CPU by setup name."""

    def __init__(
        self, procs: Procs, tmp: Path, engine_ports: list[int], engine_pids: list[int], listen: list[int], kept: int
    ):
        self.engine_ports, self.engine_pids, self.tmp = engine_ports, engine_pids, tmp
        everyone = frozenset(range(len(engine_ports)))
        ports = iter(listen)
        self.listen, self.nginx = {}, {}
        for name, rewrite in (("as written", False), (f"{kept} kept", True)):
            fewer = (lambda text: KEPT.sub(f"keepalive {kept};", text)) if rewrite else (lambda text: text)
            single, port = f"single-ka, {name}", next(ports)
            prefix = tmp / f"single-{int(rewrite)}"
            prefix.mkdir(mode=0o755)
            text = single_text(f"127.0.0.1:{port}", engine_ports, everyone, prefix, 1024)
            self.listen[single], self.nginx[single] = port, [Nginx(procs, prefix, fewer(text), port)]
            layers, port = f"mipart, {name}", next(ports)
            back, front = tmp / f"back-{int(rewrite)}", tmp / f"front-{int(rewrite)}"
            back.mkdir(mode=0o755)
            front.mkdir(mode=0o755)
            back_text, front_text = layer_texts(f"127.0.0.1:{port}", engine_ports, everyone, back, front, 1024)
            self.listen[layers] = port
            self.nginx[layers] = [Nginx(procs, back, fewer(back_text), None), Nginx(procs, front, front_text, port)]


def levels_of(text: str) -> list[int]:
    """--levels: positive concurrencies, comma-separated (argparse's one line for anything else)."""
    try:
        levels = [int(level) for level in text.split(",")]
    except ValueError:
        levels = []
    if not levels or min(levels) < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: want positive integers, comma-separated, as 64,256")
    return levels


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kept", type=int, default=16, help="the back's keepalive to compare with (default 16)")
    parser.add_argument("--reps", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=12.0, help="each measurement's length")
    parser.add_argument("--levels", type=levels_of, default="64,256", help="client concurrencies, comma-separated")
    args = parser.parse_args()
    levels = args.levels
    before = machine()
    procs = Procs()
    with workdir() as tmp:
        tmp.chmod(0o755)  # nginx workers (www-data) reach the back's unix socket and the temp dirs
        base = free_block(6, 10001, 20000)
        engine_ports, listen = [base, base + 1], [base + 2 + i for i in range(4)]
        try:
            engine_pids = start_engines(procs, engine_ports, tps=50, max_seqs=1024, logs=tmp)
            setups = Setups(procs, tmp, engine_ports, engine_pids, listen, args.kept)
            names = ["direct", *setups.listen]
            cells: dict[tuple[int, str], list] = {}
            for rep in range(args.reps):
                print(f"rep {rep + 1}/{args.reps}", file=sys.stderr)
                for level in levels:
                    for name in names:
                        run = measured(setups, name, lambda: client_run(setups.ports(name), args.seconds, level))
                        cells.setdefault((level, name), []).append(run)
        finally:
            procs.close()
    print(f"at the start: {before}; at the end: {machine()}")
    print(f"{args.reps} repetitions of {args.seconds:g} s, medians\n")
    print("| short | variant | req/s | vs direct | errors | cores client/nginx/engines |\n|---|---|---|---|---|---|")
    for level in levels:
        direct = statistics.median(r["requests_per_s"] for r, _ in cells[(level, "direct")])
        for name in names:
            rps = statistics.median(r["requests_per_s"] for r, _ in cells[(level, name)])
            errors = sum(r["errors"] for r, _ in cells[(level, name)])
            cell = cores_cell(cells[(level, name)])
            print(f"| c={level} | {name} | {rps:.0f} | {rps / direct:.3f} | {errors} | {cell} |")


if __name__ == "__main__":
    main()
