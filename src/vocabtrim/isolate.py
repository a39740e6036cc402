"""Run a function in a child process, so that a native library dying there (a signal, as
llama.cpp's AMX matmul did on Xeon hosts) cannot take the command down with it: the caller
hears how the child ended and carries on."""

from __future__ import annotations

import multiprocessing
import signal
from typing import Any, Callable


class Crashed(Exception):
    """The child ended without an answer; the message says how ("SIGSEGV", "exit status 3")."""


def run_isolated(fn: Callable[..., Any], *args: Any) -> Any:
    """fn(*args) in a fresh (spawned) process: its result, its exception raised again here,
    or Crashed. fn must be importable by name (a module's top-level function)."""
    ctx = multiprocessing.get_context("spawn")
    answer, reply = ctx.Pipe(duplex=False)
    child = ctx.Process(target=_call, args=(reply, fn, args), daemon=True)
    child.start()
    reply.close()
    try:
        kind, value = answer.recv()
    except EOFError:  # it died before answering
        kind = value = None
    child.join()
    if kind == "ok":
        return value
    if kind == "error":
        raise value
    code = child.exitcode or 0
    raise Crashed(signal.Signals(-code).name if code < 0 else f"exit status {code}")


def _call(reply, fn: Callable[..., Any], args: tuple) -> None:
    try:
        out = ("ok", fn(*args))
    except Exception as e:  # noqa: BLE001 - every failure is the caller's to raise
        out = ("error", e)
    try:
        reply.send(out)
    except Exception as e:  # noqa: BLE001 - an answer or exception that does not pickle
        reply.send(("error", RuntimeError(f"{type(e).__name__}: {e}")))
