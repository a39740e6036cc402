"""`vocabtrim serve` on the default pair: the shared suffix store on two-turn conversations,
the server's overhead, and the time to first token of a streamed answer.

The two-turn questions of the project's Spec-Bench-format sample are sent as
conversations through the `openai` client (the second turn carries the first answer),
greedy, to two servers in turn: one with the store of earlier answers shared across
requests (the default) and one where every request starts with none (`--store-tokens 0`).
For each request it records the client's wall-clock time and the engine's own seconds
(the `vocabtrim` field): the difference is what the server adds (HTTP, queue, template,
JSON). Then every second turn is asked once more, streamed, for the time to its first
text. Last, `vocabtrim generate --json` answers the first turns in fresh processes (no
store, like the second server) as a cross-check of the same tokens and speed. One run,
nothing else may run meanwhile; name the CPU with the figures.

    python benchmarks/serve_turns.py --max-new-tokens 128
"""

from __future__ import annotations

import argparse
import json
import platform
import re
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

from openai import OpenAI

from vocabtrim.files import atomic_write

SAMPLE = Path(__file__).with_name("spec_bench_sample.jsonl")


def start(port: int, *args: str) -> tuple[subprocess.Popen, OpenAI]:
    p = subprocess.Popen(["vocabtrim", "serve", "--port", str(port), *args], stdout=subprocess.DEVNULL,
                         stderr=subprocess.PIPE, text=True)  # stdout: uvicorn's access log
    url = re.search(r"http://\S+?:\d+", p.stderr.readline()).group(0)
    client = OpenAI(base_url=url + "/v1", api_key="none", max_retries=0, timeout=900)
    for line in p.stderr:  # loading; the server says when it is ready
        print(line, end="", file=sys.stderr)
        if line.startswith("ready"):
            threading.Thread(target=lambda: sys.stderr.writelines(p.stderr), daemon=True).start()
            return p, client
    raise SystemExit(f"the server ended: {p.wait()}")


def ask(client: OpenAI, messages: list[dict], max_tokens: int) -> dict:
    t = time.perf_counter()
    r = client.chat.completions.create(model="x", messages=messages, max_tokens=max_tokens, temperature=0)
    wall = time.perf_counter() - t
    stats = r.model_extra["vocabtrim"]
    return {"text": r.choices[0].message.content, "tokens": r.usage.completion_tokens, "wall": wall,
            "engine": stats["seconds"], "tau": stats["tau"], "queued": stats["queued_s"]}


def streamed(client: OpenAI, messages: list[dict], max_tokens: int) -> dict:
    t, first = time.perf_counter(), None
    text = []
    for ch in client.chat.completions.create(model="x", messages=messages, max_tokens=max_tokens, temperature=0,
                                             stream=True):
        if ch.choices and ch.choices[0].delta.content:
            first = first or time.perf_counter() - t
            text.append(ch.choices[0].delta.content)
    return {"ttft": first, "wall": time.perf_counter() - t, "text": "".join(text)}


def conversations(client: OpenAI, questions: list[dict], n: int) -> list[dict]:
    out = []
    for q in questions:
        first = ask(client, [{"role": "user", "content": q["turns"][0]}], n)
        messages = [{"role": "user", "content": q["turns"][0]}, {"role": "assistant", "content": first["text"]},
                    {"role": "user", "content": q["turns"][1]}]
        out.append({"id": q["question_id"], "first": first, "second": ask(client, messages, n),
                    "messages": messages})
    for c in out:
        c["stream"] = streamed(client, c["messages"], n)
    return out


def rate(rows: list[dict], key: str = "wall") -> float:
    return sum(r["tokens"] for r in rows) / sum(r[key] for r in rows)


def _ours(path: Path) -> bool:
    try:
        return json.loads(path.read_text()).get("script") == "serve_turns"
    except (OSError, UnicodeDecodeError, ValueError, AttributeError):
        return False


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--max-new-tokens", type=int, default=128)
    ap.add_argument("--port", type=int, default=8765)
    ap.add_argument("--out", type=Path, default=Path("results/serve_turns.json"))
    args = ap.parse_args()
    if args.out.exists() and not _ours(args.out):  # checked before minutes of runs
        raise SystemExit(f"error: refusing to overwrite {args.out}: this script did not write it")
    questions = [q for q in map(json.loads, SAMPLE.read_text().splitlines()) if len(q["turns"]) == 2]
    runs = {}
    for mode, extra in (("shared", ()), ("fresh", ("--store-tokens", "0"))):
        server, client = start(args.port, *extra)
        try:
            runs[mode] = conversations(client, questions, args.max_new_tokens)
        finally:
            server.terminate()
            server.wait(60)
    gen = []
    for q, c in zip(questions, runs["fresh"]):
        r = subprocess.run(["vocabtrim", "generate", "--json", "--prompt", q["turns"][0], "--max-new-tokens",
                            str(args.max_new_tokens)], capture_output=True, text=True, check=True)
        d = json.loads(r.stdout)
        gen.append({"tokens": d["new_tokens"], "engine": d["seconds"], "same": d["text"] == c["first"]["text"]})

    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    print(f"CPU: {cpu}; {len(questions)} two-turn conversations, {args.max_new_tokens} new tokens, greedy")
    same = all(a["second"]["text"] == b["second"]["text"] for a, b in zip(runs["shared"], runs["fresh"]))
    for mode, rows in runs.items():
        second = [c["second"] for c in rows]
        every = second + [c["first"] for c in rows]
        overhead = sum(r["wall"] for r in every) / sum(r["engine"] for r in every) - 1
        print(f"{mode:>6} store: second turns {rate(second):.2f} tok/s (engine {rate(second, 'engine'):.2f}, "
              f"tau {statistics.mean(r['tau'] for r in second):.2f}); server overhead {overhead:+.1%} of engine time; "
              f"streamed time to first token median {statistics.median(c['stream']['ttft'] for c in rows):.3f} s")
    ratio = rate([c["second"] for c in runs["shared"]]) / rate([c["second"] for c in runs["fresh"]])
    print(f"shared / fresh store, second turns: {ratio:.3f}x; answers identical: {same}")
    served = rate([c["first"] for c in runs["fresh"]])
    print(f"first turns, fresh store: server {served:.2f} tok/s (wall) vs vocabtrim generate "
          f"{rate(gen, 'engine'):.2f} tok/s (engine): {served / rate(gen, 'engine'):.3f}x; "
          f"same text: {all(g['same'] for g in gen)}")
    body = json.dumps({"script": "serve_turns", "cpu": cpu, "runs": runs, "generate": gen}, indent=1)
    atomic_write(args.out, lambda tmp: Path(tmp).write_text(body))
    print(f"records in {args.out}")


if __name__ == "__main__":
    main()
