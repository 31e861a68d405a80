"""A keep-alive load client for completions, short or streamed (aiohttp's pooled connections); prints one JSON line.

guidellm (the bench's load tool) always streams and counts no connections, so the short-request
rows and the reload runs use this: `--concurrency` workers, each sending one request after another for `--seconds`, over
one aiohttp connection pool that reuses connections as any HTTP/1.1 client library does. With
several `--port`s, worker i uses port i mod n (the "direct" variant: the client balances).
A failure is anything the client sees that is not a 2xx answer read to its end: a reset, an
EOF (server disconnected), a timeout, a non-2xx status, a stream that ends without [DONE]. Nothing is retried, as an OpenAI client
does not retry a POST that failed on a reused connection. Answers that say `Connection: close` are
counted apart (`closes_announced`): the pool opens the next connection anew and loses nothing, as
when nginx ends a connection after `keepalive_requests` (1000 by default since nginx 1.19.10).

Run: PYTHONPATH=agent .venv/bin/python perf/balancer_client.py --port P [--port Q] --concurrency 64 --seconds 10
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time
from collections import Counter

import aiohttp

MODEL = "test/fake-llm"


async def worker(
    session: aiohttp.ClientSession,
    url: str,
    body: dict,
    stop: float,
    latencies: list[float],
    failures: Counter,
    tokens: list[int],
    announced: Counter,
) -> None:
    while time.monotonic() < stop:
        started = time.monotonic()
        try:
            async with session.post(url, json=body) as response:
                announced["close"] += response.headers.get("Connection", "").lower() == "close"
                if response.status // 100 != 2:
                    await response.read()
                    failures[f"http {response.status}"] += 1
                    continue
                made = await (streamed(response) if body["stream"] else answered(response))
                if made is None:
                    failures["stream ended without [DONE]"] += 1
                    continue
                tokens[0] += made
        except aiohttp.ServerDisconnectedError:
            failures["server disconnected (EOF)"] += 1
            continue
        except aiohttp.ClientOSError as exc:
            failures[f"os error {exc.errno}" if exc.errno else f"os error: {str(exc)[:50]}"] += 1
            continue
        except (aiohttp.ClientError, asyncio.TimeoutError, ValueError, KeyError) as exc:
            failures[type(exc).__name__] += 1
            continue
        latencies.append(time.monotonic() - started)


async def answered(response: aiohttp.ClientResponse) -> int:
    return int(json.loads(await response.read())["usage"]["completion_tokens"])


async def streamed(response: aiohttp.ClientResponse) -> int | None:
    """Tokens of a stream read to its end (so the pool may reuse its connection); None when it ended without
    [DONE] (cut) or carried an error."""
    tokens, done, failed = 0, False, False
    async for line in response.content:
        done |= line.startswith(b"data: [DONE]")
        failed |= line.startswith(b'data: {"error"')
        tokens += line.startswith(b"data: {") and not failed
    return tokens if done and not failed else None


async def run(
    ports: list[int],
    concurrency: int,
    seconds: float,
    max_tokens: int,
    keepalive: bool = True,
    model: str = MODEL,
    stream: bool = False,
) -> dict:
    opened = [0]

    async def on_connection(session, context, params) -> None:
        opened[0] += 1

    trace = aiohttp.TraceConfig()
    trace.on_connection_create_end.append(on_connection)
    pooling = {"keepalive_timeout": 60} if keepalive else {"force_close": True}
    connector = aiohttp.TCPConnector(limit=0, limit_per_host=0, **pooling)
    timeout = aiohttp.ClientTimeout(total=60)
    latencies: list[float] = []
    failures: Counter = Counter()
    announced: Counter = Counter()
    tokens = [0]
    body = {"model": model, "prompt": "one two three four", "max_tokens": max_tokens, "stream": stream}
    async with aiohttp.ClientSession(connector=connector, timeout=timeout, trace_configs=[trace]) as session:
        started = time.monotonic()
        stop = started + seconds
        await asyncio.gather(
            *(
                worker(
                    session,
                    f"http://127.0.0.1:{ports[i % len(ports)]}/v1/completions",
                    body,
                    stop,
                    latencies,
                    failures,
                    tokens,
                    announced,
                )
                for i in range(concurrency)
            )
        )
        elapsed = time.monotonic() - started
    ordered = sorted(latencies)
    return {
        "requests": len(ordered),
        "failures": dict(failures),
        "errors": sum(failures.values()),
        "elapsed_s": elapsed,
        "tokens_per_s": tokens[0] / elapsed,
        "requests_per_s": len(ordered) / elapsed,
        "connections_opened": opened[0],
        "closes_announced": announced["close"],
        "latency_ms": {
            "p50": 1000 * statistics.median(ordered) if ordered else 0.0,
            "p99": 1000 * ordered[int(0.99 * (len(ordered) - 1))] if ordered else 0.0,
        },
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, action="append", required=True)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--max-tokens", type=int, default=1)
    parser.add_argument("--no-keepalive", action="store_true", help="one connection per request")
    parser.add_argument("--model", default=MODEL)
    parser.add_argument("--stream", action="store_true", help="streamed completions, each read to its [DONE]")
    args = parser.parse_args()
    seconds = min(args.seconds, 600.0)
    result = run(args.port, args.concurrency, seconds, args.max_tokens, not args.no_keepalive, args.model, args.stream)
    print(json.dumps(asyncio.run(result)))


if __name__ == "__main__":
    main()
