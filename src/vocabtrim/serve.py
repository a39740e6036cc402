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
import itertools
import json
import math
import queue
import secrets
import socket
import sys
import threading
import time
import traceback
from collections import Counter, deque
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch
import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.exceptions import HTTPException

from .adapt import Online
from .drafters import Drafter, SuffixDrafter
from .engine import Engine, Stop
from .errors import VocabtrimError
from .files import atomic_write, check_output
from .metrics import GenerationStats
from .prompts import chat_ids, encode_prompt
from .policies import Policy
from .sampling import Sampling
from .text import TextStream
from .vocab import tokenizer_fingerprint

# --- what a request may say ---


class _Body(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True)  # OpenAI's other fields (user, metadata...) ignored


class StreamOptions(_Body):
    include_usage: bool = False


class Options(_Body):
    """The fields both endpoints read. Those that would change the target's distribution
    (penalties) or that we do not compute (logprobs, n > 1) are refused, not ignored."""

    model: str | None = None
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    temperature: float = Field(1.0, ge=0, le=2)
    top_p: float = Field(1.0, gt=0, le=1)
    top_k: int = Field(0, ge=0)  # llama.cpp's server takes it too
    seed: int | None = Field(None, ge=0, lt=2**64)
    stop: str | list[str] | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    n: int = 1
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    logprobs: bool | int | None = None
    return_tokens: bool = False  # our extension: the answer's token ids in the `vocabtrim` field

    def checked(self) -> Options:
        for name, ok in (("n", self.n == 1), ("presence_penalty", self.presence_penalty == 0),
                         ("frequency_penalty", self.frequency_penalty == 0), ("logprobs", not self.logprobs)):
            if not ok:
                raise ApiError(400, f"{name}={getattr(self, name)} is not supported: one answer per "
                                    "request, exactly the target's distribution, no log-probabilities", name)
        if "" in self.stops:
            raise ApiError(400, "an empty stop string would match at once", "stop")
        return self

    @property
    def stops(self) -> tuple[str, ...]:
        return (self.stop,) if isinstance(self.stop, str) else tuple(self.stop or ())


class Part(_Body):
    type: Literal["text"]
    text: str


class Message(_Body):
    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[Part]

    def as_dict(self) -> dict:
        text = self.content if isinstance(self.content, str) else "".join(p.text for p in self.content)
        return {"role": "system" if self.role == "developer" else self.role, "content": text}


class ChatRequest(Options):
    messages: list[Message] = Field(min_length=1)


class CompletionRequest(Options):
    prompt: str | list[str] | list[int]


ERROR_TYPES = {400: "invalid_request_error", 401: "authentication_error", 404: "not_found_error",
               405: "invalid_request_error", 413: "invalid_request_error", 429: "rate_limit_error", 500: "server_error", 503: "server_error"}


class ApiError(Exception):
    """An answer in OpenAI's error shape."""

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None,
                 headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.param, self.code, self.headers = status, param, code, headers

    def response(self) -> JSONResponse:
        return JSONResponse({"error": {"message": str(self), "type": ERROR_TYPES.get(self.status, "error"),
                                       "param": self.param, "code": self.code}},
                            self.status, headers=self.headers)


def parse(model: type[_Body], raw: bytes) -> _Body:
    """The request body as `model`, or a 400 naming the first field at fault."""
    try:
        return model.model_validate_json(raw)
    except ValidationError as e:
        err = e.errors()[0]
        if err["type"] == "json_invalid" and (bad := _not_unicode(raw)):
            raise ApiError(400, f"the body's JSON holds text that is not valid Unicode: {bad}") from None
        where = ".".join(str(x) for x in err["loc"]) or None
        raise ApiError(400, f"{where + ': ' if where else ''}{err['msg']}", where) from None


def _not_unicode(raw: bytes) -> str | None:
    """What makes valid JSON unreadable as text (a lone surrogate escape such as \\ud800,
    which pydantic's parser calls invalid JSON), or None when the JSON itself is bad."""
    try:
        json.loads(raw)
    except ValueError:
        return None
    try:
        json.dumps(json.loads(raw), ensure_ascii=False).encode()
    except UnicodeEncodeError as e:
        return f"a lone surrogate {ascii(e.object[e.start:e.end])[1:-1]}"
    return None


async def read_body(request: Request, cap: int) -> bytes:
    """The request's body, or a 413 as soon as it is known to exceed `cap` bytes: from its
    Content-Length before a byte is read, else while it streams in, so a body that can
    never fit the context is neither read whole nor tokenized."""
    too_big = ApiError(413, f"the request body exceeds {cap} bytes (the server's --max-request-bytes)",
                       code="request_too_large")
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > cap:
        raise too_big
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > cap:
            raise too_big
    return bytes(body)


# --- the decoder ---


@dataclass
class Job:
    """One request's generation, and the way its events get back to the request."""

    ids: list[int]
    max_tokens: int
    sampling: Sampling
    seed: int
    stops: tuple[str, ...]
    stream: bool
    loop: asyncio.AbstractEventLoop
    events: asyncio.Queue = field(default_factory=asyncio.Queue)
    cancelled: threading.Event = field(default_factory=threading.Event)
    arrival: int = 0  # numbered as they come
    start: int = -1  # numbered as they start: FIFO means the same order
    queued: float = field(default_factory=time.monotonic)
    deadline: float = math.inf

    def send(self, *event) -> None:
        try:
            self.loop.call_soon_threadsafe(self.events.put_nowait, event)
        except RuntimeError:  # the server is shutting down: nobody is listening
            pass

    def halted(self) -> bool:
        return self.cancelled.is_set() or time.monotonic() > self.deadline


class Decoder:
    """The engine at batch 1: one worker thread runs jobs in arrival order from a queue of
    at most `queue_size` waiting; each generation may run `time_limit` seconds. `thread`
    False: the caller's thread becomes the worker by calling `work`."""

    def __init__(self, engine: Engine, policy: Policy, tokenizer, stop_ids: frozenset[int],
                 queue_size: int, time_limit: float, store: StoreFile | None = None, thread: bool = True,
                 online: Online | None = None, rebuild: Callable[[torch.nn.Module], tuple[Engine, Policy]] | None = None):
        self.engine, self.policy, self.tokenizer, self.stop_ids = engine, policy, tokenizer, stop_ids
        self.time_limit, self.store, self.online, self.rebuild = time_limit, store, online, rebuild
        self.jobs: queue.Queue[Job | None] = queue.Queue(maxsize=queue_size)
        self.arrivals, self.starts = itertools.count(), itertools.count()
        self.counts: Counter[str] = Counter()
        self.recent: deque[float] = deque(maxlen=16)  # seconds of the latest generations
        if thread:
            threading.Thread(target=self.work, name="vocabtrim-decoder", daemon=True).start()

    @property
    def context(self) -> int:
        return self.engine.context

    def submit(self, job: Job) -> None:
        job.arrival = next(self.arrivals)
        try:
            self.jobs.put_nowait(job)
        except queue.Full:
            wait = max(1, math.ceil((sum(self.recent) / len(self.recent) if self.recent else 10.0)
                                    * (self.jobs.qsize() + 1)))
            raise ApiError(429, f"{self.jobs.qsize()} requests are already waiting; retry in about {wait} s",
                           code="queue_full", headers={"Retry-After": str(wait)}) from None

    def close(self) -> None:
        self.jobs.put(None)

    def work(self) -> None:
        while True:
            try:
                job = self.jobs.get(timeout=self._wait())
            except queue.Empty:  # idle: time for online adaptation
                self._adapt()
                continue
            if job is None:
                return
            if job.cancelled.is_set():  # its client left while it waited
                self.counts["cancelled"] += 1
                continue
            self._run(job)

    def _wait(self) -> float | None:
        """How long to wait for a request: for ever, unless online adaptation has answers
        to learn from (none when a step is allowed now, else a second, to look again)."""
        if self.online is None or not self.online.answers:
            return None
        return 0.0 if self.online.ready() else 1.0

    def _adapt(self) -> None:
        """One adaptation step if one is allowed now; when a merge is due the serving drafter
        is replaced by the adapted one (the suffix drafter and its store carried over)."""
        if not self.online.ready():
            return
        self.counts["adapt_steps"] += 1
        if self.online.step(self.engine.target):
            suffix = suffix_store(self.engine.drafter)
            self.engine, self.policy = self.rebuild(self.online.merged())
            if suffix is not None:  # a hybrid rebuilt as a hybrid: its store carries over
                self.engine.drafter.suffix = suffix
            self.counts["adapter_merges"] += 1

    def _run(self, job: Job) -> None:
        job.start, began = next(self.starts), time.monotonic()
        job.deadline = began + self.time_limit
        stop = Stop(self.stop_ids, job.stops, self.tokenizer.decode, job.halted)
        try:
            new, stats = self.engine.generate(job.ids, job.max_tokens, self.policy, job.sampling, job.seed, stop,
                                              on_tokens=(lambda t: job.send("tokens", t)) if job.stream else None)
        except Exception as e:  # noqa: BLE001 - this request's failure, not the server's: answered, logged, on
            traceback.print_exc()
            self.counts["failed"] += 1
            job.send("error", str(e) if isinstance(e, VocabtrimError) else f"{type(e).__name__}: {e}")
            return
        left = job.cancelled.is_set()  # read before the answer goes: a finished stream sets it too
        timed_out = not left and time.monotonic() > job.deadline
        self.counts["cancelled" if left else "timed_out" if timed_out else "served"] += 1
        self.recent.append(time.monotonic() - began)
        job.send("done", new, stats, timed_out, began - job.queued)
        if self.store is not None:
            self.store.save()
        if self.online is not None and not left:
            self.online.observe(job.ids, new)


def suffix_store(drafter: Drafter | None) -> SuffixDrafter | None:
    """The suffix drafter whose store of earlier outputs an engine's drafter uses, if any."""
    return drafter if isinstance(drafter, SuffixDrafter) else getattr(drafter, "suffix", None)


class StoreFile:
    """The suffix store kept in a file across restarts: read at start, written atomically
    after every answer. A file that is not a store we wrote, or one of another tokenizer's
    tokens, is refused, never replaced."""

    FORMAT = "vocabtrim suffix store"

    def __init__(self, path: Path):
        self.path, self.docs = Path(path), []
        check_output(self.path)
        if self.path.exists():
            try:
                data = json.loads(self.path.read_text())
                ok = data.get("format") == self.FORMAT and isinstance(data.get("docs"), list)
            except (OSError, UnicodeDecodeError, ValueError, AttributeError):
                ok = False
            if not ok:
                raise VocabtrimError(f"refusing to use or replace {self.path}: it is not a suffix store "
                                     "written by vocabtrim serve")
            self.tokenizer, self.docs = data.get("tokenizer"), data["docs"]
        self.suffix: SuffixDrafter | None = None

    def attach(self, suffix: SuffixDrafter | None, tokenizer) -> None:
        """Fill `suffix`'s store from the file and keep writing it back."""
        if suffix is None:
            raise VocabtrimError("--store keeps the suffix drafter's store; this drafter has none "
                                 "(use --drafter hybrid or suffix)")
        fingerprint = tokenizer_fingerprint(tokenizer)
        if self.docs and self.tokenizer != fingerprint:
            raise VocabtrimError(f"{self.path} holds another tokenizer's tokens; give another --store file")
        self.suffix, self.tokenizer = suffix, fingerprint
        suffix.remember([(str(k), [int(t) for t in out]) for k, out in self.docs])

    def save(self) -> None:
        body = json.dumps({"format": self.FORMAT, "tokenizer": self.tokenizer,
                           "docs": [[k, out] for k, out in self.suffix.docs]})
        atomic_write(self.path, lambda tmp: Path(tmp).write_text(body))


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

    def wait(self) -> None:
        while self.thread.is_alive():
            self.thread.join(0.5)

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(10)


def start(service: Service, host: str = "127.0.0.1", port: int = 8000, log: bool = True) -> Running:
    """Listen on host:port (0: any free port) and serve `service` from a background thread;
    the models may load afterwards (`service.decoder`)."""
    try:
        sock = socket.create_server((host, port), family=socket.AF_INET6 if ":" in host else socket.AF_INET)
    except OSError as e:
        raise VocabtrimError(f"cannot listen on {host}:{port}: {e.strerror or e}") from None
    config = uvicorn.Config(app(service), log_level="info" if log else "warning", access_log=log,
                            timeout_graceful_shutdown=5)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, name="vocabtrim-http", daemon=True)
    thread.start()
    return Running(server, thread, sock.getsockname()[1])


def serve(service: Service, load: Callable[[], Decoder], host: str, port: int) -> None:
    """Listen, load the models, serve until interrupted. The models load in the thread that
    then decodes (`load` makes a Decoder with thread=False): llama.cpp's OpenMP workers ran a
    third slower for a thread once another one had driven them (measured: 27.5 against 38
    ms a target step), so one thread drives them all."""
    running = start(service, host, port)
    where = f"http://{'[' + host + ']' if ':' in host else host}:{running.port}"
    print(f"listening on {where}; loading the models (/health answers 503 until they are ready)",
          file=sys.stderr)
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
        print(f"ready: {service.name} at {where}/v1", file=sys.stderr)
        running.wait()
    finally:
        running.stop()
        if service.decoder is not None:
            service.decoder.close()
