"""A fake OpenAI-compatible engine: a cheap test double for one vLLM server.

It behaves like vLLM wherever the agent can observe it: the port refuses
connections until the "model" is loaded, /health is 200 (503 once the engine
is dead), /v1/models, /v1/completions and /v1/chat/completions (with SSE
streaming paced at a fixed token rate) and /metrics with vLLM's metric names.
Faults can be injected from the command line or at run time by signal:

    SIGUSR1  engine dies, port stays open (/health 503, completions 500)
    SIGUSR2  hang: connections are accepted but nothing is ever answered
    SIGWINCH wedged: /health and /metrics answer 200, generations never produce another token
    SIGTERM  graceful exit 0 (also SIGINT)

Every response carries `X-Fake-Engine: <host>:<port>` and generated ids embed
the port, so a test behind a load balancer can tell which backend answered.
Kept to stdlib + aiohttp so 64 of them fit on a small test machine.
"""
