"""What a request to `vocabtrim serve` may say: the OpenAI-style bodies, their errors, and
reading a body no larger than the server allows."""

from __future__ import annotations

import json
from typing import Literal

from fastapi import Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError




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
