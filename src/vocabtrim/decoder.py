"""The server's one decoder: requests as jobs in a bounded FIFO queue, run one after
another through the same engine (online adaptation in the idle time between them), and
the suffix store kept in a file across restarts."""

from __future__ import annotations

import asyncio
import itertools
import json
import math
import queue
import threading
import time
import traceback
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .adapt import Online
from .drafters import SuffixDrafter
from .api import ApiError
from .engine import Engine, Stop
from .errors import VocabtrimError
from .files import atomic_write, check_output
from .policies import Policy
from .sampling import Sampling
from .vocab import tokenizer_fingerprint



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
            store = self.engine.drafter.suffix_store()
            self.engine, self.policy = self.rebuild(self.online.merged())
            if store is not None:  # a hybrid rebuilt as a hybrid: its store carries over
                self.engine.drafter.adopt_store(store)
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
