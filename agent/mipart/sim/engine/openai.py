"""The fake engine's OpenAI-compatible HTTP API: completions, chat, streaming, /health, /metrics."""

from __future__ import annotations

import asyncio
import json
import os
import time

from aiohttp import web

from mipart.prometheus import CONTENT_TYPE, Exposition
from mipart.sim.engine.state import (
    DEAD,
    HUNG,
    WEDGED,
    BadRequest,
    EngineConfig,
    EngineDead,
    EngineState,
    engine_dead_response,
    error_response,
    hang_forever,
)


def new_id(cfg: EngineConfig, state: EngineState, prefix: str) -> str:
    """Unique id that names the port, so tests can count which backend answered."""
    state.next_id += 1
    return f"{prefix}-{cfg.port}-{state.next_id}-{os.urandom(4).hex()}"


def token_text(i: int) -> str:
    """Token i as it appears in the output; tokens join to 'tok0 tok1 ...'."""
    return f"tok{i}" if i == 0 else f" tok{i}"


def usage(prompt: int, completion: int) -> dict:
    return {"prompt_tokens": prompt, "total_tokens": prompt + completion, "completion_tokens": completion}


def sse(payload: dict | str) -> bytes:
    """One server-sent event, as vLLM frames them."""
    data = payload if isinstance(payload, str) else json.dumps(payload, separators=(",", ":"))
    return f"data: {data}\n\n".encode()


# ---------------------------------------------------------------- request parsing


async def read_body(request: web.Request) -> dict:
    """Parse the JSON body; vLLM answers malformed input with 400."""
    try:
        body = json.loads(await request.read() or b"null")
    except ValueError as exc:
        raise BadRequest(f"Invalid JSON body: {exc}") from None
    if not isinstance(body, dict):
        raise BadRequest("Request body must be a JSON object")
    return body


def check_model(cfg: EngineConfig, body: dict) -> None:
    """A wrong model name is a 404 in vLLM; a missing one means the served model."""
    model = body.get("model")
    if model is not None and model != cfg.model:
        raise BadRequest(f"The model `{model}` does not exist.", 404, "NotFoundError")


def count_words(text: str) -> int:
    """Stand-in tokenizer: one token per whitespace-separated word."""
    return len(text.split())


def completion_prompt_tokens(body: dict) -> int:
    """Prompt length of a /v1/completions request (text or token ids; no batches)."""
    prompt = body.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], (str, list)):
        prompt = prompt[0]
    if isinstance(prompt, str):
        return max(1, count_words(prompt))
    if isinstance(prompt, list) and prompt and all(isinstance(t, int) for t in prompt):
        return len(prompt)
    raise BadRequest("`prompt` must be a string or a list of token ids (the fake engine does not batch)")


def message_text(content) -> str:
    """Text of a chat message content: a string or a list of {type: text} parts."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(p.get("text", "") for p in content if isinstance(p, dict))
    return ""


def chat_prompt_tokens(body: dict) -> int:
    """Prompt length of a /v1/chat/completions request."""
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages or not all(isinstance(m, dict) for m in messages):
        raise BadRequest("`messages` must be a non-empty list of message objects")
    return max(1, sum(count_words(message_text(m.get("content"))) + 1 for m in messages))


def max_tokens(cfg: EngineConfig, body: dict, prompt_tokens: int, *keys: str) -> int:
    """Requested output length, validated like vLLM (>= 1, fits the context)."""
    value = next((body[k] for k in keys if body.get(k) is not None), cfg.max_tokens_default)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise BadRequest(f"max_tokens must be at least 1, got {value!r}.")
    if prompt_tokens + value > cfg.max_model_len:
        raise BadRequest(
            f"This model's maximum context length is {cfg.max_model_len} tokens. However, "
            f"you requested {prompt_tokens + value} tokens ({prompt_tokens} in the messages, "
            f"{value} in the completion). Please reduce the length of the messages or completion."
        )
    return value


def wants_usage_chunk(body: dict) -> bool:
    """stream_options.include_usage adds a final usage-only chunk, as in vLLM."""
    options = body.get("stream_options")
    return isinstance(options, dict) and bool(options.get("include_usage"))


# ---------------------------------------------------------------- generation


async def admit(cfg: EngineConfig, state: EngineState, prompt_tokens: int) -> None:
    """Wait for one of --max-num-seqs slots (that wait is vllm:num_requests_waiting)."""
    state.waiting += 1
    try:
        await state.slots.acquire()
    finally:
        state.waiting -= 1
    state.running += 1
    state.kv_tokens += prompt_tokens


def release(state: EngineState, used_tokens: int, finished: str | None) -> None:
    """Give the slot back; count success only for requests that finished."""
    state.slots.release()
    state.running -= 1
    state.kv_tokens -= used_tokens
    if finished:
        state.success[finished] = state.success.get(finished, 0) + 1


async def generate(cfg: EngineConfig, state: EngineState, n: int):
    """Yield n tokens at --tokens-per-second, the first after --first-token-delay (a long prefill);
    stall when hung or wedged, stop when the engine dies."""
    loop = asyncio.get_running_loop()
    start = loop.time() + cfg.first_token_delay
    if cfg.first_token_delay:
        await asyncio.sleep(cfg.first_token_delay)
    for i in range(n):
        if cfg.tokens_per_second > 0:
            await asyncio.sleep(max(0.0, start + (i + 1) / cfg.tokens_per_second - loop.time()))
        if state.mode in (HUNG, WEDGED):
            await hang_forever(state)
        if state.mode == DEAD:
            raise EngineDead()
        state.generation_tokens += 1
        state.kv_tokens += 1
        yield token_text(i)


class Generation:
    """One admitted request: holds its slot until finished, then updates the counters."""

    def __init__(self, cfg: EngineConfig, state: EngineState, prompt_tokens: int, n: int):
        self.cfg, self.state, self.prompt_tokens, self.n = cfg, state, prompt_tokens, n
        self.produced = 0

    async def __aenter__(self) -> Generation:
        await admit(self.cfg, self.state, self.prompt_tokens)
        return self

    async def tokens(self):
        """Tokens as produced; the last one is followed by no more. The prompt's tokens are counted
        with the first, when its prefill is done (as vLLM 0.32 counts vllm:prompt_tokens_total)."""
        async for tok in generate(self.cfg, self.state, self.n):
            if not self.produced and self.state is not None:
                self.state.prompt_tokens += self.prompt_tokens
            self.produced += 1
            yield tok

    def finish(self, reason: str | None) -> None:
        """Release before the last bytes go out, so /metrics is exact once a client sees the end."""
        if self.state is not None:
            release(self.state, self.prompt_tokens + self.produced, reason)
            self.state = None

    async def __aexit__(self, *exc) -> None:
        self.finish(None)


# ---------------------------------------------------------------- completions


def completion_choice(text: str, finish: str | None) -> dict:
    return {"index": 0, "text": text, "logprobs": None, "finish_reason": finish, "stop_reason": None}


def chat_choice(delta: dict, finish: str | None) -> dict:
    return {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}


async def start_stream(request: web.Request) -> web.StreamResponse:
    """SSE response headers; chunked so every token is flushed as produced."""
    resp = web.StreamResponse(headers={"Content-Type": "text/event-stream; charset=utf-8", "Cache-Control": "no-cache"})
    await resp.prepare(request)
    return resp


async def stream_tokens(request, gen: Generation, chunk, first: dict | None, usage_chunk: dict | None):
    """Send each token as its own SSE event, then [DONE]; on engine death an error event."""
    resp = await start_stream(request)
    if first is not None:
        await resp.write(sse(first))
    try:
        last = None
        async for tok in gen.tokens():
            if last is not None:
                await resp.write(sse(chunk(last, None)))
            last = tok
        gen.finish("length")
        if last is not None:
            await resp.write(sse(chunk(last, "length")))
        if usage_chunk is not None:
            usage_chunk["usage"] = usage(gen.prompt_tokens, gen.produced)
            await resp.write(sse(usage_chunk))
    except EngineDead:
        gen.finish(None)
        err = {
            "error": {
                "message": "EngineCore encountered an issue.",
                "type": "InternalServerError",
                "param": None,
                "code": 500,
            }
        }
        await resp.write(sse(err))
    await resp.write(sse("[DONE]"))
    await resp.write_eof()
    return resp


async def run_completion(cfg, state, request, body: dict, prompt_tokens: int, n: int):
    """POST /v1/completions once validated."""
    rid, created = new_id(cfg, state, "cmpl"), int(time.time())
    head = {"id": rid, "object": "text_completion", "created": created, "model": cfg.model}
    async with Generation(cfg, state, prompt_tokens, n) as gen:
        if body.get("stream"):

            def chunk(tok, finish):
                return {**head, "choices": [completion_choice(tok, finish)]}

            tail = {**head, "choices": []} if wants_usage_chunk(body) else None
            return await stream_tokens(request, gen, chunk, None, tail)
        text = "".join([tok async for tok in gen.tokens()])
        gen.finish("length")
    return web.json_response({**head, "choices": [completion_choice(text, "length")], "usage": usage(prompt_tokens, n)})


async def run_chat(cfg, state, request, body: dict, prompt_tokens: int, n: int):
    """POST /v1/chat/completions once validated."""
    rid, created = new_id(cfg, state, "chatcmpl"), int(time.time())
    kind = "chat.completion.chunk" if body.get("stream") else "chat.completion"
    head = {"id": rid, "object": kind, "created": created, "model": cfg.model}
    async with Generation(cfg, state, prompt_tokens, n) as gen:
        if body.get("stream"):

            def chunk(tok, finish):
                return {**head, "choices": [chat_choice({"content": tok}, finish)]}

            first = {**head, "choices": [chat_choice({"role": "assistant", "content": ""}, None)]}
            tail = {**head, "choices": []} if wants_usage_chunk(body) else None
            return await stream_tokens(request, gen, chunk, first, tail)
        text = "".join([tok async for tok in gen.tokens()])
        gen.finish("length")
    message = {"role": "assistant", "content": text}
    choice = {"index": 0, "message": message, "logprobs": None, "finish_reason": "length", "stop_reason": None}
    return web.json_response({**head, "choices": [choice], "usage": usage(prompt_tokens, n)})


async def completions(cfg: EngineConfig, state: EngineState, request: web.Request):
    """POST /v1/completions."""
    return await _generate_request(cfg, state, request, completion_prompt_tokens, ("max_tokens",), run_completion)


async def chat_completions(cfg: EngineConfig, state: EngineState, request: web.Request):
    """POST /v1/chat/completions."""
    return await _generate_request(
        cfg, state, request, chat_prompt_tokens, ("max_completion_tokens", "max_tokens"), run_chat
    )


async def _generate_request(cfg, state, request, count_prompt, length_keys: tuple[str, ...], run):
    """vLLM's order: a bad request is 400 even when the engine is dead; a dead engine is 500."""
    try:
        body = await read_body(request)
        check_model(cfg, body)
        prompt_tokens = count_prompt(body)
        n = max_tokens(cfg, body, prompt_tokens, *length_keys)
    except BadRequest as exc:
        return error_response(str(exc), exc.status, exc.kind)
    if state.mode == DEAD:
        return engine_dead_response()
    try:
        return await run(cfg, state, request, body, prompt_tokens, n)
    except EngineDead:
        return engine_dead_response()


async def health(cfg: EngineConfig, state: EngineState, request: web.Request) -> web.Response:
    """GET /health: empty 200, or 503 once the engine is dead (port still open)."""
    return web.Response(status=503 if state.mode == DEAD else 200)


async def models(cfg: EngineConfig, state: EngineState, request: web.Request) -> web.Response:
    """GET /v1/models in vLLM's shape."""
    card = {
        "id": cfg.model,
        "object": "model",
        "created": int(time.time()),
        "owned_by": "vllm",
        "root": cfg.model,
        "parent": None,
        "max_model_len": cfg.max_model_len,
    }
    return web.json_response({"object": "list", "data": [card]})


CONNECTIONS_OPENED = "fake_engine:connections_opened_total"


def render_metrics(cfg: EngineConfig, state: EngineState, names: tuple[str, ...] = ()) -> str:
    """The vLLM metrics the agent reads, with vLLM's names and model_name label (values as floats, like vLLM);
    only the series `names` when given, as prometheus_client answers /metrics?name[]=..."""
    model = {"model_name": cfg.model}
    kv = min(1.0, state.kv_tokens / cfg.kv_cache_tokens) if cfg.kv_cache_tokens else 0.0
    out = Exposition(names)
    for name, kind, text, value in (
        ("vllm:num_requests_running", "gauge", "Number of requests in model execution batches.", state.running),
        ("vllm:num_requests_waiting", "gauge", "Number of requests waiting to be processed.", state.waiting),
        ("vllm:kv_cache_usage_perc", "gauge", "KV-cache usage. 1 means 100 percent usage.", kv),
        ("vllm:prompt_tokens_total", "counter", "Number of prefill tokens processed.", state.prompt_tokens),
        ("vllm:generation_tokens_total", "counter", "Number of generation tokens processed.", state.generation_tokens),
    ):
        out.family(name, kind, text, [(model, float(value))])
    out.family(
        CONNECTIONS_OPENED,
        "counter",
        "Connections the fake engine was sent requests on (not a vLLM series).",
        [({}, float(state.connections_opened))],
    )
    out.family(
        "vllm:request_success_total",
        "counter",
        "Count of successfully processed requests.",
        [({"finished_reason": r, **model}, float(c)) for r, c in sorted(state.success.items())],
    )
    return out.text()


async def metrics(cfg: EngineConfig, state: EngineState, request: web.Request) -> web.Response:
    """GET /metrics (Prometheus text)."""
    text = render_metrics(cfg, state, tuple(request.query.getall("name[]", ())))
    return web.Response(body=text.encode(), headers={"Content-Type": CONTENT_TYPE})


# ---------------------------------------------------------------- app and lifecycle
