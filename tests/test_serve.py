"""`vocabtrim serve` (Issue 27): real HTTP on loopback, the official `openai` client, tiny
models. Greedy answers are `vocabtrim generate`'s, sampled ones the target's distribution;
load, dropped clients, a full queue, malformed requests and the API key leave the server
answering."""

import collections
import http.client
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time

import pytest
from conftest import (
    RUNS,
    SMALL_PROMPT,
    SMALL_SAMPLING,
    chi2_pvalue,
    cli,
    exact_joint,
    save_tiny,
    small_pair,
)
from openai import OpenAI

from vocabtrim import models, prompts
from vocabtrim.adapt import Online, Settings
from vocabtrim.assembly import Assembler, Built, Parts, Spec
from vocabtrim.bench.identity import divergence
from vocabtrim.engine import Engine, Stop
from vocabtrim.errors import VocabtrimError
from vocabtrim.policies import Static
from vocabtrim.decoder import Decoder, StoreFile
from vocabtrim.serve import Service, start
from vocabtrim.text import TextStream

ENGINE = ("--drafter", "hybrid", "--policy", "static:3", "--backend", "torch", "--dtype", "float32")


class Server:
    """A server on tiny models in this process, as `vocabtrim serve` builds it."""

    def __init__(self, target, draft=None, kind="hybrid", policy="static:3", queue_size=16, time_limit=600.0,
                 api_key=None, store=None, online=None):
        parts = target if isinstance(target, Parts) else Parts(
            models.load(str(target), "float32"), None if draft is None else models.load(str(draft), "float32"))
        built = Built.of(parts, Spec(kind, kind), policy)
        if store is not None:
            store.attach(built.engine.drafter.suffix_store(), parts.target.tokenizer)
        self.service = Service("tiny", api_key, drafter=kind)
        self.decoder = Decoder(built.engine, built.policy, parts.target.tokenizer, prompts.stop_token_ids(parts.target),
                               queue_size, time_limit, store, online=online, rebuild=built.rebuild)
        self.service.decoder = self.decoder
        self.running = start(self.service, "127.0.0.1", 0, log=False)
        self.url = self.running.url
        self.client = OpenAI(base_url=self.url + "/v1", api_key=api_key or "none", max_retries=0)

    def close(self):
        self.running.stop()
        self.decoder.close()


@pytest.fixture(scope="module")
def server(tiny_dirs):
    s = Server(tiny_dirs["target"], tiny_dirs["draft"])
    yield s
    s.close()


@pytest.fixture(scope="module")
def long_dirs(tmp_path_factory):
    """A tiny target with a long context: generations that last a while."""
    root = tmp_path_factory.mktemp("long")
    return save_tiny(root / "target", seed=5, context=8192)


class Answer:
    def __init__(self, status, headers, body):
        self.status_code, self.headers = status, headers
        self.body = body

    def json(self):
        return json.loads(self.body)


def call(url, path, body=None, method="POST", headers=None) -> Answer:
    """One plain HTTP request (bytes sent as they are, anything else as JSON)."""
    host, port = url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=30)
    data = body if isinstance(body, bytes) or body is None else json.dumps(body).encode()
    conn.request(method, path, data, {"Content-Type": "application/json", **(headers or {})})
    r = conn.getresponse()
    out = Answer(r.status, {k.lower(): v for k, v in r.getheaders()}, r.read())
    conn.close()
    return out


def generate(dirs, prompt, *args):
    r = cli("generate", "--target", dirs["target"], "--draft", dirs["draft"], *ENGINE, "--prompt", prompt,
            "--json", *args)
    assert r.exit_code == 0, r.stderr
    return json.loads(r.stdout)


# --- answers ---


def test_chat_and_completion_answer_what_generate_writes(server, tiny_dirs):
    c = server.client
    want = generate(tiny_dirs, "w1 w2 w3", "--max-new-tokens", 12)
    chat = c.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "w1 w2 w3"}],
                                     max_tokens=12, temperature=0)
    assert chat.choices[0].message.content == want["text"]
    assert chat.usage.completion_tokens == want["new_tokens"] and chat.usage.prompt_tokens == want["prompt_tokens"]
    assert chat.choices[0].finish_reason in ("stop", "length") and chat.object == "chat.completion"
    stats = chat.model_extra["vocabtrim"]
    assert stats["drafter"] == "hybrid" and stats["target_forwards"] >= 1 and stats["seconds"] > 0

    chunks = list(c.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "w1 w2 w3"}],
                                            max_tokens=12, temperature=0, stream=True,
                                            stream_options={"include_usage": True}))
    assert "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices) == want["text"]
    assert chunks[-1].usage.completion_tokens == want["new_tokens"]
    assert [ch.choices[0].finish_reason for ch in chunks if ch.choices][-1] == chat.choices[0].finish_reason

    raw = generate(tiny_dirs, "w7 w9 w3", "--max-new-tokens", 9, "--raw")
    done = c.completions.create(model="tiny", prompt="w7 w9 w3", max_tokens=9, temperature=0)
    assert done.choices[0].text == raw["text"] and done.object == "text_completion"
    streamed = c.completions.create(model="tiny", prompt="w7 w9 w3", max_tokens=9, temperature=0, stream=True)
    assert "".join(ch.choices[0].text for ch in streamed) == raw["text"]
    assert [m.id for m in c.models.list().data] == ["tiny"]


def test_stop_strings_end_the_answer_before_them(server, tiny_dirs):
    whole = generate(tiny_dirs, "w1 w2 w3", "--max-new-tokens", 12)["text"]
    stop = " ".join(whole.split()[3:5])
    for stream in (False, True):
        r = server.client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "w1 w2 w3"}],
                                                  max_tokens=12, temperature=0, stop=[stop, "zzz"], stream=stream)
        text = "".join(ch.choices[0].delta.content or "" for ch in r if ch.choices) if stream else \
            r.choices[0].message.content
        assert text == whole[:whole.index(stop)]


def test_text_stream_holds_back_what_may_become_a_stop_string():
    t = TextStream(lambda ids: "".join(ids), ("END",))
    assert [t.push(list(x)) for x in ("ab", "cE", "N", "x")] == ["ab", "c", "", "ENx"]
    t = TextStream(lambda ids: "".join(ids), ("END", "\n\n"))
    assert [t.push(list(x)) for x in ("a\n", "EN", "D tail")] == ["a", "\n", ""] and t.stopped
    assert (t.finish(), t.text) == ("", "a\n")
    t = TextStream(lambda ids: "".join(ids))
    assert (t.push(["a", "\ufffd"]), t.finish()) == ("a", "\ufffd")


def test_sampled_answers_are_distributed_as_the_target(tmp_path):
    """The target's own probability of every two-token answer (the end-of-text token 1 ends
    an answer at once), against answers sampled through HTTP with a model drafter."""
    target, draft = small_pair()
    s = Server(save_tiny(tmp_path / "t", model=target), save_tiny(tmp_path / "d", model=draft),
               kind="sd", policy="static:3")
    try:
        def sample(seed):  # plain HTTP: the openai client takes ~40 ms a request here, the server ~4
            r = call(s.url, "/v1/completions", {"prompt": SMALL_PROMPT, "max_tokens": 2, "seed": seed,
                                                "temperature": SMALL_SAMPLING.temperature,
                                                "top_k": SMALL_SAMPLING.top_k, "return_tokens": True})
            return tuple(r.json()["vocabtrim"]["token_ids"])
        exact = collections.defaultdict(float)
        for toks, p in exact_joint(2).items():
            exact[toks[:1] if toks[0] == 1 else toks] += p
        runs = RUNS // 2
        assert chi2_pvalue(collections.Counter(sample(i) for i in range(runs)), exact, runs) > 1e-3
        # the test has power: a server that reused one seed would fail it
        assert chi2_pvalue(collections.Counter(sample(7) for _ in range(200)), exact, 200) < 1e-6
    finally:
        s.close()


# --- load and faults ---


def test_eight_concurrent_clients_each_get_their_own_answer_in_arrival_order(server):
    prompts = [f"w{i} w{i + 3} w{i + 9}" for i in range(8)]
    ask = lambda p: server.client.chat.completions.create(
        model="tiny", messages=[{"role": "user", "content": p}], max_tokens=10, temperature=0)
    alone = {p: ask(p).choices[0].message.content for p in prompts}
    got = {}
    threads = [threading.Thread(target=lambda p=p: got.__setitem__(p, ask(p))) for p in prompts]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert {p: r.choices[0].message.content for p, r in got.items()} == alone
    order = sorted(r.model_extra["vocabtrim"]["arrival"] for r in got.values())
    starts = {r.model_extra["vocabtrim"]["arrival"]: r.model_extra["vocabtrim"]["start"] for r in got.values()}
    assert [starts[a] for a in order] == sorted(starts.values())  # first come, first served


def test_a_client_that_drops_mid_stream_halts_its_generation(long_dirs):
    s = Server(long_dirs, kind="ar", policy="static:1")
    try:  # greedy, this prompt never meets an end token: 8000 target steps, seconds
        body = {"model": "tiny", "prompt": "w1 w2 w3", "max_tokens": 8000, "temperature": 0, "stream": True}
        host, port = s.url.removeprefix("http://").split(":")
        conn = http.client.HTTPConnection(host, int(port), timeout=30)
        conn.request("POST", "/v1/completions", json.dumps(body), {"Content-Type": "application/json"})
        assert conn.getresponse().readline().startswith(b"data: ")  # the answer has started
        conn.close()
        deadline = time.monotonic() + 20
        while s.decoder.counts["cancelled"] < 1 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert s.decoder.counts["cancelled"] == 1  # halted at a round boundary, not run to 8000 tokens
        after = s.client.completions.create(model="tiny", prompt="w1 w2 w3", max_tokens=5, temperature=0)
        assert after.usage.completion_tokens == 5
    finally:
        s.close()


def test_a_time_limit_ends_a_generation_with_finish_reason_length(long_dirs):
    s = Server(long_dirs, kind="ar", policy="static:1", time_limit=0.3)
    try:
        r = s.client.completions.create(model="tiny", prompt="w1 w2 w3", max_tokens=8000, temperature=0)
        assert r.choices[0].finish_reason == "length" and r.model_extra["vocabtrim"]["timed_out"]
        assert 0 < r.usage.completion_tokens < 8000
    finally:
        s.close()


def test_past_the_queue_bound_requests_get_429_with_retry_after(tiny_dirs):
    s = Server(tiny_dirs["target"], kind="suffix", policy="static:5", queue_size=1)
    gate, engine = threading.Event(), s.decoder.engine
    real = engine.generate
    engine.generate = lambda *a, **k: (gate.wait(30), real(*a, **k))[1]  # the decoder, held busy
    body = {"model": "tiny", "prompt": "w1 w2", "max_tokens": 3, "temperature": 0}
    try:
        answers = []
        waiting = [threading.Thread(target=lambda: answers.append(call(s.url, "/v1/completions", body)))
                   for _ in range(2)]
        for t in waiting:  # one decoding (held), one in the queue
            t.start()
            time.sleep(0.3)
        full = call(s.url, "/v1/completions", body)
        assert full.status_code == 429 and int(full.headers["retry-after"]) >= 1
        assert full.json()["error"]["type"] == "rate_limit_error"
        gate.set()
        for t in waiting:
            t.join(30)
        assert [a.status_code for a in answers] == [200, 200]
    finally:
        gate.set()
        s.close()


MALFORMED = [
    ("/v1/chat/completions", b"{not json"),
    ("/v1/chat/completions", b"[]"),
    ("/v1/chat/completions", b'"hello"'),
    ("/v1/chat/completions", b""),
    ("/v1/chat/completions", {}),
    ("/v1/chat/completions", {"messages": []}),
    ("/v1/chat/completions", {"messages": "hi"}),
    ("/v1/chat/completions", {"messages": [{"role": "user"}]}),
    ("/v1/chat/completions", {"messages": [{"role": "wizard", "content": "hi"}]}),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": 5}]}),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}]}),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "w1"}], "n": 2}),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "w1"}], "max_tokens": 100000}),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "w1"}], "max_tokens": 0}),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "w1"}], "max_tokens": "5"}),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "w1"}], "max_tokens": 2.5}),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "w1"}], "temperature": -1}),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "w1"}], "temperature": 3}),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "w1"}], "temperature": 1e-7}),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "w1"}], "temperature": "hot"}),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "w1"}], "top_p": 0}),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "w1"}], "stop": ""}),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "w1"}], "stop": [1, 2]}),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "w1"}], "stream": "yes"}),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "w1"}], "seed": -1}),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "w1"}], "presence_penalty": 0.5}),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "w1"}], "logprobs": True}),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "w1"}], "stream_options": 3}),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "w1"}], "model": 7}),
    ("/v1/completions", {}),
    ("/v1/completions", {"prompt": ""}),
    ("/v1/completions", {"prompt": []}),
    ("/v1/completions", {"prompt": ["w1", "w2"]}),
    ("/v1/completions", {"prompt": [1, 99999]}),
    ("/v1/completions", {"prompt": [-1]}),
    ("/v1/completions", {"prompt": {"text": "w1"}}),
    ("/v1/completions", {"prompt": "w1 " * 300}),
    ("/v1/nothing", {}),
]


def test_malformed_requests_get_4xx_errors_and_the_server_stays_up(server):
    for path, body in MALFORMED:
        r = call(server.url, path, body)
        assert 400 <= r.status_code < 500, (path, body, r.status_code, r.text)
        assert r.json()["error"]["message"], (path, body, r.text)
    assert call(server.url, "/v1/chat/completions", method="GET").status_code == 405
    assert call(server.url, "/health", method="GET").json()["status"] == "ok"
    r = server.client.completions.create(model="tiny", prompt="w1 w2 w3", max_tokens=3, temperature=0)
    assert r.usage.completion_tokens == 3 and r.choices[0].finish_reason == "length"


def raw_request(url, head: bytes, body_parts: list[bytes]) -> bytes:
    """The server's reply to a request sent as raw bytes, reading as soon as it answers."""
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=30) as sock:
        sock.sendall(head)
        try:
            for part in body_parts:
                sock.sendall(part)
        except OSError:  # it answered and closed before the body was all sent
            pass
        reply = b""
        while b"\r\n\r\n" not in reply or len(reply.partition(b"\r\n\r\n")[2]) < int(
                re.search(rb"content-length: (\d+)", reply, re.I)[1]):
            reply += sock.recv(65536)
        return reply


def test_a_body_over_the_cap_gets_413_before_it_is_read_whole(server):
    cap = Service.BYTES_PER_TOKEN * server.decoder.context  # the default: 64 bytes a token of the context
    head = (b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\n\r\n" % (10 << 20))
    t0 = time.perf_counter()
    reply = raw_request(server.url, head, [b'{"messages": [{"role": "user", "content": "'])  # 10 MB declared, 43 B sent
    assert reply.startswith(b"HTTP/1.1 413") and b"request_too_large" in reply and b"%d bytes" % cap in reply
    assert time.perf_counter() - t0 < 5
    chunked = b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
    piece = b"a" * 4096
    reply = raw_request(server.url, chunked, [b"%x\r\n%s\r\n" % (len(piece), piece)] * (2 * cap // len(piece) + 8))
    assert reply.startswith(b"HTTP/1.1 413"), reply[:200]
    fits = {"messages": [{"role": "user", "content": "w2" * 20}], "max_tokens": 2}
    assert call(server.url, "/v1/chat/completions", fits).status_code == 200  # the server answers on


def test_text_that_is_not_unicode_is_named_as_such(server):
    r = call(server.url, "/v1/chat/completions", b'{"messages": [{"role": "user", "content": "a\\ud800b"}]}')
    assert r.status_code == 400 and "not valid Unicode: a lone surrogate \\ud800" in r.json()["error"]["message"]
    r = call(server.url, "/v1/chat/completions", b'{"messages": [{"role": "user", "content": "a\\ud8')
    assert r.status_code == 400 and "Unicode" not in r.json()["error"]["message"]  # bad JSON stays bad JSON


def test_the_body_cap_is_an_option(server):
    server.service.max_request_bytes = 100
    try:
        fits = {"messages": [{"role": "user", "content": "w2"}], "max_tokens": 1}
        assert call(server.url, "/v1/chat/completions", fits).status_code == 200
        fits["messages"][0]["content"] = "w2" * 50
        r = call(server.url, "/v1/chat/completions", fits)
        assert r.status_code == 413 and "exceeds 100 bytes" in r.json()["error"]["message"]
    finally:
        server.service.max_request_bytes = None


def test_the_api_key_is_enforced(tiny_dirs):
    s = Server(tiny_dirs["target"], kind="suffix", policy="static:5", api_key="sekrit")
    try:
        body = {"prompt": "w1", "max_tokens": 2}
        assert call(s.url, "/v1/completions", body).status_code == 401
        wrong = call(s.url, "/v1/completions", body, headers={"Authorization": "Bearer nope"})
        assert wrong.status_code == 401 and wrong.json()["error"]["code"] == "invalid_api_key"
        assert call(s.url, "/v1/models", method="GET").status_code == 401
        assert s.client.completions.create(model="tiny", prompt="w1", max_tokens=2).usage.completion_tokens == 2
        assert call(s.url, "/health", method="GET").status_code == 200
    finally:
        s.close()


# --- the shared store ---


def test_the_suffix_store_is_shared_across_requests_and_kept_in_its_file(tiny_dirs, tmp_path):
    path = tmp_path / "store.json"
    s = Server(tiny_dirs["target"], tiny_dirs["draft"], store=StoreFile(path))
    try:
        r = s.client.completions.create(model="tiny", prompt="w4 w5 w6", max_tokens=8, temperature=0,
                                        extra_body={"return_tokens": True})
        ids = r.model_extra["vocabtrim"]["token_ids"]
        assert [out for _, out in s.decoder.engine.drafter.suffix_store().docs] == [ids]
    finally:
        s.close()
    again = StoreFile(path)  # a restart reads it back
    assert [out for _, out in again.docs] == [ids]
    s = Server(tiny_dirs["target"], tiny_dirs["draft"], store=again)
    try:
        assert [out for _, out in s.decoder.engine.drafter.suffix_store().docs] == [ids]
    finally:
        s.close()
    other = tmp_path / "notes.json"
    other.write_text('{"mine": true}')
    with pytest.raises(VocabtrimError, match="not a suffix store"):
        StoreFile(other)
    assert other.read_text() == '{"mine": true}'
    parts = Parts(models.load(str(tiny_dirs["other_vocab"])))
    engine, _ = Assembler(parts).build(Spec("suffix", "suffix"), "static:5")
    with pytest.raises(VocabtrimError, match="another tokenizer"):
        StoreFile(path).attach(engine.drafter.suffix_store(), parts.target.tokenizer)


@pytest.mark.real
def test_the_real_pair_answers_through_the_server_as_the_target_alone(real_pair):
    target, draft = real_pair
    prompt = "Write a Python function that checks whether a string is a palindrome."
    ids = prompts.encode_prompt(target.tokenizer, prompt)
    ref, _ = Engine(target.as_target()).generate(ids, 48, Static(1), stop=Stop(prompts.stop_token_ids(target)))
    s = Server(Parts(target, draft), kind="hybrid", policy="cost")
    try:
        r = s.client.chat.completions.create(model="x", messages=[{"role": "user", "content": prompt}],
                                             max_tokens=48, temperature=0, extra_body={"return_tokens": True})
        out = r.model_extra["vocabtrim"]["token_ids"]
        d = divergence(target.as_target(), ids, ref, out)
        assert d is None or d["tie"], f"greedy output through the server differs from the target alone: {d}"
        assert r.usage.prompt_tokens == len(ids) and r.model_extra["vocabtrim"]["target_forwards"] < len(out)
    finally:
        s.close()


def test_online_adaptation_learns_between_requests_and_the_answers_stay_the_targets(tiny_dirs):
    online = Online(models.load(str(tiny_dirs["draft"]), "float32"), Settings(rank=4, alpha=8, lr=3e-3),
                    share=1.0, merge_every=2, dtype="float32")
    s = Server(tiny_dirs["target"], tiny_dirs["draft"], kind="sd", policy="static:3", online=online)
    try:
        before = s.decoder.engine.drafter
        prompts = [f"w{i} w{i + 4} w{i + 1}" for i in range(4)]
        ask = lambda p: s.client.completions.create(
            model="tiny", prompt=p, max_tokens=12, temperature=0).choices[0].text
        first = [ask(p) for p in prompts]
        deadline = time.monotonic() + 60
        while s.decoder.counts["adapter_merges"] < 1 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert s.decoder.counts["adapter_merges"] >= 1 and s.decoder.counts["adapt_steps"] >= 2
        assert s.decoder.engine.drafter is not before  # the adapted drafter serves now
        assert [ask(p) for p in prompts] == first  # and the answers are still the target's
        health = call(s.url, "/health", method="GET").json()
        assert health["adapter_merges"] >= 1
    finally:
        s.close()


# --- the command ---


def test_the_url_is_announced_before_the_server_logs_anything():
    """The serve command's first stderr line is its URL: said before the server's thread,
    whose log lines would race it, starts (a full test run once read uvicorn's first)."""
    servers = lambda: sum(t.name == "vocabtrim-http" for t in threading.enumerate())  # noqa: E731
    before, seen = servers(), []
    running = start(Service("tiny", None), "127.0.0.1", 0, announce=lambda url: seen.append((url, servers())))
    try:
        assert seen == [(running.url, before)] and servers() == before + 1
        assert running.url == f"http://127.0.0.1:{running.port}"
    finally:
        running.stop()


def test_the_serve_command_listens_loads_answers_and_stops_on_ctrl_c(tiny_dirs, tmp_path):
    # Ctrl-C as in a terminal: a shell's background job (a CI runner's, say) starts with
    # SIGINT ignored, which Python and so this child would inherit
    foreground = "import runpy, signal; signal.signal(signal.SIGINT, signal.default_int_handler); " \
                 "runpy.run_module('vocabtrim.cli', run_name='__main__')"
    p = subprocess.Popen([sys.executable, "-c", foreground, "serve", "--target", tiny_dirs["target"],
                          "--draft", tiny_dirs["draft"], *ENGINE, "--port", "0", "--store", tmp_path / "s.json"],
                         stderr=subprocess.PIPE, text=True, env={**os.environ, "PYTHONFAULTHANDLER": "1"})
    try:
        url = re.search(r"http://\S+?:\d+", p.stderr.readline()).group(0)
        deadline = time.monotonic() + 60
        while call(url, "/health", method="GET").status_code != 200 and time.monotonic() < deadline:
            time.sleep(0.2)
        client = OpenAI(base_url=url + "/v1", api_key="none", max_retries=0)
        r = client.chat.completions.create(model="x", messages=[{"role": "user", "content": "w1 w2 w3"}],
                                           max_tokens=12, temperature=0)
        assert r.choices[0].message.content == generate(tiny_dirs, "w1 w2 w3", "--max-new-tokens", 12)["text"]
        assert (tmp_path / "s.json").exists()
    finally:
        p.send_signal(2)
        try:
            _, err = p.communicate(timeout=30)
        except subprocess.TimeoutExpired:  # say where it hangs
            p.send_signal(signal.SIGABRT)  # faulthandler prints every thread's stack
            pytest.fail("serve did not stop within 30 s of Ctrl-C; its stderr:\n" + p.communicate()[1][-6000:])
    assert p.returncode == 130 and "interrupted" in err


@pytest.mark.parametrize("args, words", [
    (["--drafter", "model", "--store", "s.json"], ["--store", "hybrid or suffix"]),
    (["--no-draft", "--policy", "static:3"], ["--policy"]),
    (["--api-key", " "], ["--api-key is empty"]),
    (["--store", "."], ["is a directory"]),
    (["--adapt-online", "--drafter", "suffix"], ["--adapt-online", "drafter model"]),
    (["--adapt-online", "--draft-quant", "int8"], ["--draft-quant"]),
    (["--adapt-share", "0.5"], ["--adapt-share", "--adapt-online"]),
])
def test_serve_refuses_bad_options_before_loading(tiny_dirs, args, words):
    r = cli("serve", "--target", tiny_dirs["target"], "--port", "0", *args)
    assert r.exit_code == 1 and r.stderr.startswith("error: ") and len(r.stderr.strip().splitlines()) == 1
    for w in words:
        assert w in r.stderr


def test_serve_says_when_its_port_is_taken(tiny_dirs):
    import socket
    with socket.create_server(("127.0.0.1", 0)) as taken:
        r = cli("serve", "--target", tiny_dirs["target"], "--port", taken.getsockname()[1])
    assert r.exit_code == 1 and "cannot listen on 127.0.0.1" in r.stderr

