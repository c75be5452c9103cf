"""OpenAI-compatible HTTP API over the continuous-batching scheduler (FastAPI).

The app only translates schemas: requests become engine Requests (token ids), the engine thread calls
back with tokens, and TextStream turns them into text deltas (stop strings included). Every error has
OpenAI's shape {"error": {"message", "type", "param", "code"}} and its proper status.
"""

from __future__ import annotations

import asyncio
import json
import queue
import threading
import time
import uuid
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fastapi import FastAPI
from fastapi import Request as HTTPRequest
from fastapi.responses import HTMLResponse, JSONResponse, PlainTextResponse, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from ..api import LLM
from ..engine.generate import PromptTooLongError
from ..engine.scheduler import Request, Scheduler
from ..streaming import TextStream


class APIError(Exception):
    def __init__(
        self,
        status: int,
        message: str,
        type_: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
    ):
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type_, param, code

    def response(self) -> JSONResponse:
        return JSONResponse(
            status_code=self.status,
            content={"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}},
        )


@dataclass
class Metrics:
    requests: dict[tuple[str, int], int] = field(default_factory=dict)
    prompt_tokens: int = 0
    completion_tokens: int = 0
    latency_sum: float = 0.0
    latency_count: int = 0
    ttft_sum: float = 0.0
    ttft_count: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def count(self, endpoint: str, status: int) -> None:
        with self.lock:
            self.requests[(endpoint, status)] = self.requests.get((endpoint, status), 0) + 1


# -- request validation ------------------------------------------------------------------------------
def _field(body: dict, name: str, types: tuple, default: Any, check=None, what: str = "") -> Any:
    if name not in body or body[name] is None:
        return default
    v = body[name]
    if isinstance(v, bool) and bool not in types:  # JSON true is not a number
        raise APIError(400, f"'{name}' must be {what}, got {json.dumps(v)}", param=name)
    if not isinstance(v, types):
        raise APIError(400, f"'{name}' must be {what}, got {json.dumps(v)}", param=name)
    if check is not None and not check(v):
        raise APIError(400, f"'{name}' must be {what}, got {json.dumps(v)}", param=name)
    return v


@dataclass
class Params:
    max_tokens: int
    temperature: float
    top_p: float
    seed: int | None
    stop: list[str]
    stream: bool


def _params(body: dict, default_max_tokens: int) -> Params:
    n = _field(body, "n", (int,), 1, lambda v: v == 1, "1 (one choice per request is supported)")
    del n
    stop = body.get("stop")
    if stop is None:
        stops = []
    elif isinstance(stop, str):
        stops = [stop]
    elif isinstance(stop, list) and all(isinstance(s, str) for s in stop) and len(stop) <= 4:
        stops = stop
    else:
        raise APIError(400, "'stop' must be a string or a list of at most 4 strings", param="stop")
    return Params(
        max_tokens=_field(body, "max_tokens", (int,), default_max_tokens, lambda v: v >= 1, "an integer >= 1"),
        temperature=float(_field(body, "temperature", (int, float), 1.0, lambda v: 0 <= v <= 2, "a number in [0, 2]")),
        top_p=float(_field(body, "top_p", (int, float), 1.0, lambda v: 0 < v <= 1, "a number in (0, 1]")),
        seed=_field(body, "seed", (int,), None, None, "an integer"),
        stop=stops,
        stream=_field(body, "stream", (bool,), False, None, "a boolean"),
    )


def create_app(
    llm: LLM,
    model_name: str | None = None,
    max_batch: int = 8,
    max_queue: int = 64,
    max_len: int = 4096,
    compile: bool | None = None,
    prefill_chunk: int = 256,
    sync_every: int | None = None,
) -> FastAPI:
    if llm.tokenizer is None:
        raise ValueError("serving needs a tokenizer")
    name = model_name or llm.name
    tok = llm.tokenizer
    sched = Scheduler(
        llm.model,
        max_batch=max_batch,
        max_len=max_len,
        prefill_chunk=prefill_chunk,
        compile=compile,
        max_queue=max_queue,
        sync_every=sync_every,
    )
    metrics = Metrics()
    engine = threading.Thread(target=sched.serve_forever, name="opengemma-engine", daemon=True)

    @asynccontextmanager
    async def lifespan(_app):
        await asyncio.to_thread(sched.warmup)  # compile before serving (the app answers once it is up)
        engine.start()  # one engine loop for all requests
        yield
        sched.stop()

    app = FastAPI(title="opengemma", version="0.1.0", lifespan=lifespan)
    app.state.scheduler, app.state.metrics, app.state.model_name = sched, metrics, name

    @app.exception_handler(APIError)
    async def _api_error(_req, exc: APIError):
        return exc.response()

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_req, exc: StarletteHTTPException):
        return APIError(exc.status_code, str(exc.detail), "invalid_request_error").response()

    @app.exception_handler(Exception)
    async def _internal(_req, exc: Exception):
        return APIError(500, f"internal error: {type(exc).__name__}: {exc}", "server_error").response()

    async def _body(req: HTTPRequest) -> dict:
        try:
            body = await req.json()
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise APIError(400, f"request body is not valid JSON: {e}") from None
        if not isinstance(body, dict):
            raise APIError(400, "request body must be a JSON object")
        model = body.get("model")
        if not isinstance(model, str):
            raise APIError(400, "'model' is required and must be a string", param="model")
        if model != name:
            raise APIError(
                404,
                f"model '{model}' does not exist; this server serves '{name}'",
                param="model",
                code="model_not_found",
            )
        return body

    def _launch(ids: list[int], p: Params) -> tuple[Request, asyncio.Queue, TextStream]:
        if len(ids) + p.max_tokens > max_len:
            raise APIError(
                400,
                f"this model's maximum context length is {max_len} tokens; the request has "
                f"{len(ids)} prompt tokens and asks for {p.max_tokens} completion tokens "
                f"({len(ids) + p.max_tokens} in all)",
                param="max_tokens",
                code="context_length_exceeded",
            )
        loop = asyncio.get_running_loop()
        out: asyncio.Queue = asyncio.Queue()
        stream = TextStream(tok, p.stop)

        def on_token(t: int) -> bool:  # engine thread
            delta = stream.push(t)
            if delta:
                loop.call_soon_threadsafe(out.put_nowait, ("delta", delta))
            return stream.stopped

        def on_finish(r: Request) -> None:  # engine thread
            tail = stream.finish()
            if tail:
                loop.call_soon_threadsafe(out.put_nowait, ("delta", tail))
            loop.call_soon_threadsafe(out.put_nowait, ("end", r))

        req = Request(
            ids,
            max_new_tokens=p.max_tokens,
            temperature=p.temperature,
            top_p=p.top_p,
            seed=p.seed,
            stop_ids=tok.stop_ids,
            on_token=on_token,
            on_finish=on_finish,
        )
        try:
            sched.submit(req)
        except queue.Full:
            raise APIError(
                503,
                f"server is busy: {sched.queued} requests are queued; retry later",
                "server_error",
                code="queue_full",
            ) from None
        except (PromptTooLongError, ValueError) as e:
            raise APIError(400, str(e)) from None
        return req, out, stream

    def _finish_reason(req: Request, stream: TextStream) -> str:
        return "stop" if req.finish_reason == "stop" or stream.stopped else "length"

    def _usage(n_prompt: int, req: Request) -> dict:
        return {
            "prompt_tokens": n_prompt,
            "completion_tokens": len(req.tokens),
            "total_tokens": n_prompt + len(req.tokens),
        }

    async def _respond(http: HTTPRequest, endpoint: str, ids: list[int], p: Params, chat: bool):
        t0 = time.perf_counter()
        req, out, stream = _launch(ids, p)
        rid = ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex[:24]
        created = int(time.time())
        obj = "chat.completion" if chat else "text_completion"

        def record(r: Request, first: float | None) -> None:
            with metrics.lock:
                metrics.prompt_tokens += len(ids)
                metrics.completion_tokens += len(r.tokens)
                metrics.latency_sum += time.perf_counter() - t0
                metrics.latency_count += 1
                if first is not None:
                    metrics.ttft_sum += first - t0
                    metrics.ttft_count += 1

        if not p.stream:
            first = None
            try:
                while True:
                    kind, val = await out.get()
                    if kind == "end":
                        break
                    first = first or time.perf_counter()
            finally:
                req.cancel()  # no-op when finished; frees the row if the client went away
            record(req, first)
            reason = _finish_reason(req, stream)
            choice = (
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": stream.text},
                    "finish_reason": reason,
                    "logprobs": None,
                }
                if chat
                else {"index": 0, "text": stream.text, "finish_reason": reason, "logprobs": None}
            )
            metrics.count(endpoint, 200)
            return JSONResponse(
                {
                    "id": rid,
                    "object": obj,
                    "created": created,
                    "model": name,
                    "choices": [choice],
                    "usage": _usage(len(ids), req),
                }
            )

        chunk_obj = "chat.completion.chunk" if chat else "text_completion"

        def chunk(delta: str | None, reason: str | None, usage: dict | None = None) -> str:
            if chat:
                d = {} if delta is None else {"content": delta}
                ch = {"index": 0, "delta": d, "finish_reason": reason, "logprobs": None}
            else:
                ch = {"index": 0, "text": delta or "", "finish_reason": reason, "logprobs": None}
            body = {"id": rid, "object": chunk_obj, "created": created, "model": name, "choices": [ch]}
            if usage is not None:
                body["usage"] = usage
            return f"data: {json.dumps(body)}\n\n"

        async def events():
            first = None
            try:
                if chat:
                    yield (
                        f"data: {json.dumps({'id': rid, 'object': chunk_obj, 'created': created, 'model': name, 'choices': [{'index': 0, 'delta': {'role': 'assistant', 'content': ''}, 'finish_reason': None, 'logprobs': None}]})}\n\n"
                    )
                while True:
                    kind, val = await out.get()
                    if kind == "end":
                        break
                    first = first or time.perf_counter()
                    yield chunk(val, None)
                yield chunk(None if chat else "", _finish_reason(req, stream), _usage(len(ids), req))
                yield "data: [DONE]\n\n"
                record(req, first)
                metrics.count(endpoint, 200)
            finally:
                req.cancel()  # a client that disconnects mid-stream frees its row at the next step

        return StreamingResponse(
            events(), media_type="text/event-stream", headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
        )

    page = (Path(__file__).parent / "static" / "chat.html").read_text()

    @app.get("/", response_class=HTMLResponse)
    async def chat_page():
        return page

    @app.get("/health")
    async def health():
        return {"status": "ok", "model": name, "active": sched.active, "queued": sched.queued}

    @app.get("/v1/models")
    async def models():
        return {"object": "list", "data": [{"id": name, "object": "model", "created": 0, "owned_by": "opengemma"}]}

    def _completion_input(body: dict) -> tuple[list[int], Params]:
        p = _params(body, 16)
        prompt = body.get("prompt")
        if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
            prompt = prompt[0]
        if not isinstance(prompt, str):
            raise APIError(400, "'prompt' must be a string (one prompt per request)", param="prompt")
        return tok.encode(prompt, bos=True), p

    def _chat_input(body: dict) -> tuple[list[int], Params]:
        p = _params(body, 256)
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            raise APIError(400, "'messages' must be a non-empty list", param="messages")
        try:
            ids, _ = tok.encode_chat(messages, add_generation_prompt=True)
        except ValueError as e:
            raise APIError(400, str(e), param="messages") from None
        return ids, p

    async def _endpoint(http: HTTPRequest, endpoint: str, parse, chat: bool):
        try:
            ids, p = parse(await _body(http))
            return await _respond(http, endpoint, ids, p, chat=chat)
        except APIError as e:
            metrics.count(endpoint, e.status)
            raise

    @app.post("/v1/completions")
    async def completions(http: HTTPRequest):
        return await _endpoint(http, "completions", _completion_input, chat=False)

    @app.post("/v1/chat/completions")
    async def chat_completions(http: HTTPRequest):
        return await _endpoint(http, "chat_completions", _chat_input, chat=True)

    @app.get("/metrics")
    async def prometheus():
        lines = [
            "# HELP opengemma_requests_total HTTP API requests by endpoint and status",
            "# TYPE opengemma_requests_total counter",
        ]
        with metrics.lock:
            for (ep, status), n in sorted(metrics.requests.items()):
                lines.append(f'opengemma_requests_total{{endpoint="{ep}",status="{status}"}} {n}')
            lines += [
                "# TYPE opengemma_prompt_tokens_total counter",
                f"opengemma_prompt_tokens_total {metrics.prompt_tokens}",
                "# TYPE opengemma_completion_tokens_total counter",
                f"opengemma_completion_tokens_total {metrics.completion_tokens}",
                "# TYPE opengemma_request_latency_seconds summary",
                f"opengemma_request_latency_seconds_sum {metrics.latency_sum:.6f}",
                f"opengemma_request_latency_seconds_count {metrics.latency_count}",
                "# TYPE opengemma_time_to_first_token_seconds summary",
                f"opengemma_time_to_first_token_seconds_sum {metrics.ttft_sum:.6f}",
                f"opengemma_time_to_first_token_seconds_count {metrics.ttft_count}",
            ]
        lines += [
            "# TYPE opengemma_queue_depth gauge",
            f"opengemma_queue_depth {sched.queued}",
            "# TYPE opengemma_active_requests gauge",
            f"opengemma_active_requests {sched.active}",
        ]
        return PlainTextResponse("\n".join(lines) + "\n", media_type="text/plain; version=0.0.4")

    return app
