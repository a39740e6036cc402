"""`vocabtrim serve`: one engine behind an OpenAI-compatible HTTP API.

Decoding stays at batch 1: requests wait in a bounded FIFO queue and one worker thread
runs them one after another through the same engine, so the suffix drafter's store of
earlier outputs is shared across requests (a chat's later turns, an agent re-sending its
context and repeated edits of one file draft from what the server wrote before). Answers
leave whole or as server-sent events in OpenAI's chunk format. A client that goes away,
or a request past its time limit, halts its generation at the next round boundary; a
request that fails is answered with an error and the server goes on.

The listening socket opens before the models load (`/health` answers 503 until they
have), so a port in use fails at once and clients can wait for readiness.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import queue
import secrets
import socket
import sys
import threading
import time
import traceback
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.exceptions import HTTPException

from .api import ApiError, ChatRequest, CompletionRequest, Options, parse, read_body
from .decoder import Decoder, Job
from .errors import VocabtrimError
from .metrics import GenerationStats
from .prompts import chat_ids, encode_prompt
from .sampling import Sampling
from .text import TextStream

# --- the HTTP side ---


class Service:
    """What the HTTP side answers from: the decoder, once the models are loaded."""

    BYTES_PER_TOKEN = 64  # the default body cap: a prompt filling the context, JSON-escaped, fits

    def __init__(self, name: str, api_key: str | None = None, backend: str = "torch", drafter: str | None = None,
                 max_request_bytes: int | None = None):
        self.name, self.api_key, self.backend, self.drafter = name, api_key, backend, drafter
        self.max_request_bytes = max_request_bytes
        self.decoder: Decoder | None = None
        self.created = int(time.time())

    def authorize(self, request: Request) -> None:
        if self.api_key is None:
            return
        given = request.headers.get("authorization", "").removeprefix("Bearer ").strip()
        if not hmac.compare_digest(given.encode(), self.api_key.encode()):
            raise ApiError(401, "a valid API key is needed (Authorization: Bearer KEY)", code="invalid_api_key")

    def ready(self) -> Decoder:
        if self.decoder is None:
            raise ApiError(503, "the models are still loading; see /health", headers={"Retry-After": "5"})
        return self.decoder

    async def body(self, request: Request) -> bytes:
        """The request's body, within the cap (--max-request-bytes, default 64 bytes a token
        of the context)."""
        cap = self.max_request_bytes or self.BYTES_PER_TOKEN * self.ready().context
        return await read_body(request, cap)

    def job(self, opts: Options, ids: list[int], loop: asyncio.AbstractEventLoop) -> Job:
        """The request's generation, checked against the context and the vocabulary."""
        decoder = self.ready()
        room = decoder.context - len(ids)
        wanted = opts.max_completion_tokens or opts.max_tokens
        if room < 1 or (wanted or 0) > room:
            raise ApiError(400, f"the prompt has {len(ids)} tokens and the context holds {decoder.context}: "
                                f"room for {max(room, 0)} new tokens" + (f", not {wanted}" if wanted else ""),
                           "max_tokens" if room >= 1 else "messages", "context_length_exceeded")
        try:
            sampling = Sampling(opts.temperature, opts.top_k, opts.top_p)
        except VocabtrimError as e:
            raise ApiError(400, str(e), "temperature") from None
        seed = secrets.randbits(63) if opts.seed is None else opts.seed
        return Job(ids, wanted or room, sampling, seed, opts.stops, opts.stream, loop)


def app(service: Service) -> FastAPI:
    """The ASGI application: OpenAI's chat and completion endpoints, the model list, health."""
    api = FastAPI(title="vocabtrim", docs_url=None, redoc_url=None, openapi_url=None)

    @api.exception_handler(ApiError)
    async def api_error(request: Request, e: ApiError) -> JSONResponse:
        return e.response()

    @api.exception_handler(HTTPException)
    async def http_error(request: Request, e: HTTPException) -> JSONResponse:
        return ApiError(e.status_code, str(e.detail)).response()

    @api.exception_handler(Exception)
    async def unexpected(request: Request, e: Exception) -> JSONResponse:
        traceback.print_exc()
        return ApiError(500, f"{type(e).__name__}: {e}").response()

    @api.get("/health")
    async def health() -> JSONResponse:
        d = service.decoder
        if d is None:
            return JSONResponse({"status": "loading"}, 503)
        return JSONResponse({"status": "ok", "model": service.name, "waiting": d.jobs.qsize(), **d.counts})

    @api.get("/v1/models")
    async def list_models(request: Request) -> JSONResponse:
        service.authorize(request)
        return JSONResponse({"object": "list", "data": [
            {"id": service.name, "object": "model", "created": service.created, "owned_by": "vocabtrim"}]})

    @api.post("/v1/chat/completions")
    async def chat(request: Request) -> Response:
        service.authorize(request)
        body = parse(ChatRequest, await service.body(request)).checked()
        tokenizer = service.ready().tokenizer
        try:
            ids = chat_ids(tokenizer, [m.as_dict() for m in body.messages])
        except Exception as e:  # noqa: BLE001 - the model's own chat template refused these messages
            raise ApiError(400, f"the chat template cannot render these messages: {e}", "messages") from None
        return await answer(request, body, ids, "chat")

    @api.post("/v1/completions")
    async def complete(request: Request) -> Response:
        service.authorize(request)
        body = parse(CompletionRequest, await service.body(request)).checked()
        tokenizer = service.ready().tokenizer
        prompt = body.prompt
        if isinstance(prompt, list) and prompt and isinstance(prompt[0], str):
            if len(prompt) != 1:
                raise ApiError(400, "one prompt per request", "prompt")
            prompt = prompt[0]
        if isinstance(prompt, str):
            try:
                ids = encode_prompt(tokenizer, prompt, raw=True)
            except VocabtrimError as e:
                raise ApiError(400, str(e), "prompt") from None
        elif not prompt or not all(0 <= t < len(tokenizer) for t in prompt):
            raise ApiError(400, f"prompt token ids must be a non-empty list of ids below {len(tokenizer)}", "prompt")
        else:
            ids = list(prompt)
        return await answer(request, body, ids, "text")

    async def answer(request: Request, body: Options, ids: list[int], shape: str) -> Response:
        job = service.job(body, ids, asyncio.get_running_loop())
        service.ready().submit(job)
        reply = Reply(service, job, body, shape)
        if body.stream:
            return EventStream(reply)
        return await reply.whole(request)

    return api


class Reply:
    """One answer in OpenAI's shapes: `chat` (message / delta) or `text` (completions)."""

    def __init__(self, service: Service, job: Job, body: Options, shape: str):
        self.service, self.job, self.body, self.shape = service, job, body, shape
        decoder = service.ready()
        self.text = TextStream(lambda ids: decoder.tokenizer.decode(ids, skip_special_tokens=True), body.stops)
        self.stop_ids = decoder.stop_ids
        self.id = f"{'chatcmpl' if shape == 'chat' else 'cmpl'}-{secrets.token_hex(12)}"

    async def whole(self, request: Request) -> Response:
        """The finished answer; a client that left gets nothing and stops its generation."""
        while True:
            try:
                event = await asyncio.wait_for(self.job.events.get(), 0.5)
            except TimeoutError:
                if await request.is_disconnected():
                    self.job.cancelled.set()
                    return Response(status_code=499)
                continue
            if event[0] == "error":
                raise ApiError(500, event[1])
            _, new, stats, timed_out, waited = event
            choice = self._choice(self.text.push(new) + self.text.finish(), self._reason(new), whole=True)
            return JSONResponse({**self._head(), "choices": [choice], "usage": self._usage(new),
                                 "vocabtrim": self._extras(new, stats, timed_out, waited)})

    async def chunks(self) -> AsyncIterator[str]:
        """Server-sent events: a first chunk (the role), text as it becomes final, a last
        chunk with the finish reason and our statistics, usage if asked, `[DONE]`."""
        if self.shape == "chat":
            yield _sse({**self._head(), "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""},
                                                     "finish_reason": None}]})
        while True:
            kind, *rest = await self.job.events.get()
            if kind == "tokens":
                if delta := self.text.push(rest[0]):
                    yield _sse({**self._head(), "choices": [self._choice(delta, None)]})
                continue
            if kind == "error":
                yield _sse({"error": {"message": rest[0], "type": "server_error", "param": None, "code": None}})
                break
            new, stats, timed_out, waited = rest
            yield _sse({**self._head(), "choices": [self._choice(self.text.finish(), self._reason(new))],
                        "vocabtrim": self._extras(new, stats, timed_out, waited)})
            if self.body.stream_options and self.body.stream_options.include_usage:
                yield _sse({**self._head(), "choices": [], "usage": self._usage(new)})
            break
        yield "data: [DONE]\n\n"

    def _head(self) -> dict:
        return {"id": self.id, "object": ("chat.completion" if self.shape == "chat" else "text_completion")
                + (".chunk" if self.body.stream and self.shape == "chat" else ""),
                "created": int(time.time()), "model": self.service.name}

    def _choice(self, text: str, reason: str | None, whole: bool = False) -> dict:
        if self.shape == "text":
            return {"index": 0, "text": text, "logprobs": None, "finish_reason": reason}
        key = "message" if whole else "delta"
        return {"index": 0, key: {"role": "assistant", "content": text} if whole else {"content": text},
                "finish_reason": reason}

    def _reason(self, new: list[int]) -> str:
        return "stop" if self.text.stopped or (new and new[-1] in self.stop_ids) else "length"

    def _usage(self, new: list[int]) -> dict:
        return {"prompt_tokens": len(self.job.ids), "completion_tokens": len(new),
                "total_tokens": len(self.job.ids) + len(new)}

    def _extras(self, new: list[int], stats: GenerationStats, timed_out: bool, waited: float) -> dict:
        """Our statistics of the answer, in a field OpenAI's clients ignore."""
        out = {"backend": self.service.backend, "drafter": self.service.drafter, "tau": stats.tau,
               "acceptance_rate": stats.acceptance_rate, "target_forwards": stats.target_forwards,
               "drafter_forwards": stats.drafter_forwards, "suffix_rounds": stats.suffix_rounds,
               "seconds": stats.seconds, "tokens_per_second": stats.tokens_per_second,
               "queued_s": waited, "arrival": self.job.arrival, "start": self.job.start, "timed_out": timed_out}
        return {**out, "token_ids": new} if self.body.return_tokens else out


class EventStream(StreamingResponse):
    """A reply's server-sent events; when the response ends, however it ends (a client that
    left mid-stream included), its generation is told to halt."""

    def __init__(self, reply: Reply):
        super().__init__(reply.chunks(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})
        self.job = reply.job

    async def __call__(self, scope, receive, send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self.job.cancelled.set()


def _sse(data: dict) -> str:
    return f"data: {json.dumps(data)}\n\n"


# --- running it ---


@dataclass
class Running:
    """A server listening on `port`, in a thread of its own."""

    server: uvicorn.Server
    thread: threading.Thread
    port: int
    url: str  # http://host:port

    def wait(self) -> None:
        while self.thread.is_alive():
            self.thread.join(0.5)

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(10)


def start(service: Service, host: str = "127.0.0.1", port: int = 8000, log: bool = True,
          announce: Callable[[str], None] = lambda url: None) -> Running:
    """Listen on host:port (0: any free port) and serve `service` from a background thread;
    the models may load afterwards (`service.decoder`). `announce` gets the URL once the
    socket listens and before the server logs anything, so that a script reading stderr
    finds it first."""
    try:
        sock = socket.create_server((host, port), family=socket.AF_INET6 if ":" in host else socket.AF_INET)
    except OSError as e:
        raise VocabtrimError(f"cannot listen on {host}:{port}: {e.strerror or e}") from None
    config = uvicorn.Config(app(service), log_level="info" if log else "warning", access_log=log,
                            timeout_graceful_shutdown=5)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, name="vocabtrim-http", daemon=True)
    port = sock.getsockname()[1]
    url = f"http://{'[' + host + ']' if ':' in host else host}:{port}"
    announce(url)
    thread.start()
    return Running(server, thread, port, url)


def serve(service: Service, load: Callable[[], Decoder], host: str, port: int) -> None:
    """Listen, load the models, serve until interrupted. The models load in the thread that
    then decodes (`load` makes a Decoder with thread=False): llama.cpp's OpenMP workers ran a
    third slower for a thread once another one had driven them (measured: 27.5 against 38
    ms a target step), so one thread drives them all."""
    running = start(service, host, port, announce=lambda url: print(
        f"listening on {url}; loading the models (/health answers 503 until they are ready)", file=sys.stderr))
    loaded: queue.Queue[Decoder | BaseException] = queue.Queue()

    def decode() -> None:
        try:
            decoder = load()
        except BaseException as e:  # noqa: BLE001 - handed to the main thread, which raises it
            loaded.put(e)
            return
        loaded.put(decoder)
        decoder.work()

    threading.Thread(target=decode, name="vocabtrim-decoder", daemon=True).start()
    try:
        got = loaded.get()
        if isinstance(got, BaseException):
            raise got
        service.decoder = got
        print(f"ready: {service.name} at {running.url}/v1", file=sys.stderr)
        running.wait()
    finally:
        running.stop()
        if service.decoder is not None:
            service.decoder.close()
