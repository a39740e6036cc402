"""Is llama.cpp batch-invariant? One decode over n tokens against n one-token decodes.

Speculative decoding on a GgmlTarget is lossless only if verifying n tokens in one
`llama_decode` gives the logits the target alone gives one token at a time. For each
setting below and each prompt (HumanEval chat prompts for the 1.5B target), this decodes a
greedy continuation one token at a time (the reference logits), then scores the same
continuation again in chunks of n tokens, each chunk one decode after cropping the cache to
its start, each chunk starting on the last token of the one before (a verification that
rejected its last draft: the crop removes a stale cell every round; the cache before a
chunk holds what earlier chunks wrote, as in a real run). The contexts pass 256 tokens, so
llama.cpp's padded KV length (n_kv) goes from 256 to 512 on the way. Per setting it prints
whether the chunked logits are bit-identical to the reference (max |diff| exactly 0),
whether every argmax agrees, the rows whose argmax differs, the same per n, and costs
measured in the same process: tokens/s of one-token decodes (64 steps after a 200-token
context) and the median milliseconds of one 2- and one 8-token decode there. Timings are
indicative (2 shared cores; the 1-minute load average is printed beside them); before
timing, each setting waits up to 15 minutes for any compile (cc1plus) to finish.

    PYTHONPATH=src python benchmarks/ggml_invariance.py --gguf /tmp/gguf/qwen2.5-coder-1.5b.gguf \
        --prompts 2 --tokens 112 --sizes 2,4,8,16 --json results/invariance.json

The timings alone, every setting twice, round-robin (about 10 minutes on a quiet machine):

    PYTHONPATH=src python benchmarks/ggml_invariance.py --timing-only --rounds 2

Each setting runs in a child process of its own: `GGML_CPU_TILED_MM` (the CPU backend's
tiled K-quant matmul for src1 batches of 8+ rows, ggml-cpu/tiled/tiled.cpp) is read once
per process. `--only "NAME;NAME"` runs a subset of the settings.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

FLASH = {"auto": -1, "on": 1, "off": 0}  # LLAMA_FLASH_ATTN_TYPE_*
KV = {"f16": 1, "f32": 0}  # GGML_TYPE_F16, GGML_TYPE_F32


@dataclass(frozen=True)
class Setting:
    """One way to run the target; the defaults are GgmlTarget's (2 threads on this machine)."""

    name: str
    repack: bool = True  # llama_model_params.use_extra_bufts: Q4_K repacked to q4_K_8x8
    tiled: bool = True  # GGML_CPU_TILED_MM: tiled K-quant matmul for 8+ rows
    flash: str = "auto"
    kv: str = "f16"
    threads: int = 2  # llama.cpp's n_threads: decodes of one token
    batch_threads: int = 0  # n_threads_batch: decodes of 2+ tokens (0: as threads)
    ubatch: int = 512


SETTINGS = [
    Setting("default"),
    Setting("flash off", flash="off"),
    Setting("kv f32", kv="f32"),
    Setting("threads 1", threads=1),
    Setting("1 thread for 1 token", threads=1, batch_threads=2),
    Setting("ubatch 1", ubatch=1),
    Setting("ubatch 3", ubatch=3),
    Setting("ubatch 3, threads 1", ubatch=3, threads=1),
    Setting("ubatch 3, 1 thread for 1 token", ubatch=3, threads=1, batch_threads=2),
    Setting("repack off", repack=False),
    Setting("tiled off", tiled=False),
    Setting("repack off, tiled off", repack=False, tiled=False),
    Setting("repack off, tiled off, threads 1", repack=False, tiled=False, threads=1),
    Setting("repack off, tiled off, 1 thread for 1 token", repack=False, tiled=False, threads=1, batch_threads=2),
    Setting("repack off, tiled off, flash off", repack=False, tiled=False, flash="off"),
]


class Ctx:
    """A llama.cpp model and context under one Setting, decoding through llama_batch."""

    def __init__(self, path: str, s: Setting, n_ctx: int = 4096, embeddings: bool = False,
                 callback: object = None):
        import llama_cpp as ll

        from vocabtrim.ggml import _init, model_params

        _init()
        self.ll = ll
        mp = model_params(Path(path), repack=s.repack)  # no AMX buffer where it crashes
        self.model = ll.llama_model_load_from_file(path.encode(), mp)
        cp = ll.llama_context_default_params()
        cp.n_ctx = cp.n_batch = n_ctx
        cp.n_ubatch = min(s.ubatch, n_ctx)
        cp.n_threads, cp.n_threads_batch = s.threads, s.batch_threads or s.threads
        cp.flash_attn_type = FLASH[s.flash]
        cp.type_k = cp.type_v = KV[s.kv]
        cp.embeddings = embeddings
        if embeddings:
            cp.pooling_type = ll.LLAMA_POOLING_TYPE_NONE
        if callback is not None:  # an ll.ggml_backend_sched_eval_callback, kept alive by its owner
            cp.cb_eval = callback
        cp.no_perf = True
        self.ctx = ll.llama_init_from_model(self.model, cp)
        if not self.model or not self.ctx:
            raise SystemExit(f"llama.cpp cannot load {path} under {s}")
        self.memory = ll.llama_get_memory(self.ctx)
        self.vocab = ll.llama_vocab_n_tokens(ll.llama_model_get_vocab(self.model))
        self.n_embd = ll.llama_model_n_embd(self.model)
        self.batch = ll.llama_batch_init(n_ctx, 0, 1)

    def decode(self, tokens: list[int], start: int, n_out: int) -> float:
        """Crop the cache to `start`, decode `tokens` at start.., outputs for the last
        n_out; seconds of the llama_decode call."""
        self.ll.llama_memory_seq_rm(self.memory, 0, start, -1)
        b = self.batch
        b.n_tokens = len(tokens)
        for i, t in enumerate(tokens):
            b.token[i], b.pos[i], b.n_seq_id[i], b.logits[i] = t, start + i, 1, i >= len(tokens) - n_out
            b.seq_id[i][0] = 0
        t0 = time.perf_counter()
        if self.ll.llama_decode(self.ctx, b) != 0:
            raise SystemExit(f"llama_decode failed on {len(tokens)} tokens at {start}")
        return time.perf_counter() - t0

    def logits(self, n: int) -> np.ndarray:
        return np.ctypeslib.as_array(self.ll.llama_get_logits(self.ctx), shape=(n, self.vocab)).copy()

    def hidden(self, i: int) -> np.ndarray:
        """The embedding (final hidden state) of output row i (embeddings contexts only)."""
        ptr = self.ll.llama_get_embeddings_ith(self.ctx, i)
        return np.ctypeslib.as_array(ctypes.cast(ptr, ctypes.POINTER(ctypes.c_float)), shape=(self.n_embd,)).copy()

    def close(self) -> None:
        self.ll.llama_batch_free(self.batch)
        self.ll.llama_free(self.ctx)
        self.ll.llama_model_free(self.model)


def reference(ctx: Ctx, prompt: list[int], n_new: int) -> tuple[list[int], np.ndarray]:
    """Greedy continuation of n_new tokens, one token a decode after the prompt's prefill;
    row i of the logits is at position len(prompt)+i (after gen[i])."""
    ctx.decode(prompt, 0, 1)
    gen = [int(ctx.logits(1)[0].argmax())]
    rows = np.empty((n_new, ctx.vocab), dtype=np.float32)
    for i in range(n_new):
        ctx.decode([gen[i]], len(prompt) + i, 1)
        rows[i] = ctx.logits(1)[0]
        if i + 1 < n_new:
            gen.append(int(rows[i].argmax()))
    return gen, rows


def rescore(ctx: Ctx, prompt: list[int], gen: list[int], ref: np.ndarray, n: int) -> dict:
    """Chunks of n tokens of gen, each one decode after a crop to its start, each chunk
    starting on the previous chunk's last token; compared row by row with ref."""
    p, c, stride = len(prompt), 0, max(1, n - 1)
    worst, rows, differ = 0.0, 0, 0
    while c + n <= len(gen):
        ctx.decode(gen[c:c + n], p + c, n)
        out, want = ctx.logits(n), ref[c:c + n]
        worst = max(worst, float(np.abs(out - want).max()))
        differ += int((out.argmax(1) != want.argmax(1)).sum())
        rows += n
        c += stride
    return {"max_diff": worst, "rows": rows, "differ": differ}


def compiling() -> bool:
    return subprocess.run(["pgrep", "-f", "cc1plus"], check=False, capture_output=True).returncode == 0


def wait_quiet(limit_s: float = 900) -> dict:
    """Wait (up to limit_s) until no compiler runs; what was seen, for the report."""
    t0, seen = time.monotonic(), compiling()
    while compiling() and time.monotonic() - t0 < limit_s:
        time.sleep(10)
    return {"compile_seen": seen, "waited_s": round(time.monotonic() - t0), "compile_after": compiling(),
            "load_1min": os.getloadavg()[0]}


def timing(ctx: Ctx, seq: list[int], context: int = 200, steps: int = 64, repeats: int = 7) -> dict:
    """Ms of a `context`-token prefill, one-token decodes/s over `steps` steps after it,
    and the median ms of one 2- and one 8-token decode at that context (after a crop)."""
    prefill = ctx.decode(seq[:context], 0, 1)
    ctx.decode(seq[context:context + 1], context, 1)  # warm-up, dropped
    spent = sum(ctx.decode(seq[context + i:context + i + 1], context + i, 1) for i in range(steps))
    out = {"prefill_ms": 1000 * prefill, "tok_s": steps / spent}
    for n in (2, 8):
        times = [ctx.decode(seq[context:context + n], context, n) for _ in range(repeats + 1)][1:]
        out[f"ms{n}"] = 1000 * statistics.median(times)
    return out


def run_setting(path: str, s: Setting, prompts: list[list[int]], n_new: int, sizes: list[int]) -> dict:
    """Everything measured for one setting (in its own process); no sizes: timing only."""
    ctx = Ctx(path, s)
    per_n = {n: {"max_diff": 0.0, "rows": 0, "differ": 0} for n in sizes}
    seqs = []
    for prompt in prompts if sizes else prompts[:1]:
        gen, ref = reference(ctx, prompt, n_new)
        seqs.append(prompt + gen)
        for n in sizes:
            r = rescore(ctx, prompt, gen, ref, n)
            acc = per_n[n]
            acc["max_diff"] = max(acc["max_diff"], r["max_diff"])
            acc["rows"] += r["rows"]
            acc["differ"] += r["differ"]
    quiet = wait_quiet()
    longest = max(seqs, key=len)
    if len(longest) < 272:
        raise SystemExit(f"timing needs a 272-token sequence, the longest is {len(longest)}: raise --tokens")
    out = {"setting": asdict(s), "per_n": per_n, "timing": timing(ctx, longest), "quiet": quiet,
           "continuations": [seq[len(p):] for seq, p in zip(seqs, prompts)]}
    ctx.close()
    return out


def load_prompts(count: int) -> list[list[int]]:
    import transformers

    from vocabtrim import catalog, data, prompts

    tok = transformers.AutoTokenizer.from_pretrained(catalog.fetch("qwen2.5-coder-1.5b"))
    return [prompts.chat_ids(tok, [{"role": "user", "content": q.turns[0]}]) for q in data.humaneval(0, count)]


def child(setting: Setting, args: argparse.Namespace, prompts: list[list[int]]) -> dict:
    """Run one setting in a fresh interpreter (its own GGML_CPU_TILED_MM) and read its JSON."""
    env = dict(os.environ, GGML_CPU_TILED_MM="1" if setting.tiled else "0")
    job = {"setting": asdict(setting), "gguf": args.gguf, "prompts": prompts, "tokens": args.tokens,
           "sizes": [] if args.timing_only else args.sizes}
    done = subprocess.run([sys.executable, __file__, "--child"], input=json.dumps(job), env=env, check=False,
                          capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"setting {setting.name!r} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def load(r: dict) -> str:
    """The 1-minute load average when timing started, and whether a compile had run."""
    q = r["quiet"]
    return f"{q['load_1min']:.1f}" + (f", waited {q['waited_s']} s for a compile" if q["compile_seen"] else "")


def timing_table(results: list[dict]) -> str:
    """--timing-only: each setting's rounds side by side (prefill of 200 tokens, tok/s of
    one-token decodes, ms of a 2- and an 8-token decode)."""
    rounds: dict[str, list[dict]] = {}
    for r in results:
        rounds.setdefault(r["setting"]["name"], []).append(r)
    lines = ["| setting | prefill ms | 1-token tok/s | 2-token ms | 8-token ms | load |", "|---|---|---|---|---|---|"]
    keys = (("prefill_ms", ".0f"), ("tok_s", ".1f"), ("ms2", ".0f"), ("ms8", ".0f"))
    for name, rs in rounds.items():
        cols = [" / ".join(f"{r['timing'][k]:{f}}" if k in r["timing"] else "-" for r in rs) for k, f in keys]
        lines.append(f"| {name} | " + " | ".join(cols) + " | " + " / ".join(load(r) for r in rs) + " |")
    return "\n".join(lines)


def fmt_diff(x: float) -> str:
    return "0" if x == 0 else f"{x:.3g}"


def table(results: list[dict], sizes: list[int]) -> str:
    """The summary table and the per-n breakdown, as markdown."""
    head = ("| setting | bit-identical | argmax-identical | rows differing | max abs diff | 1-token tok/s "
            "| 2-token ms | 8-token ms | load |\n|---|---|---|---|---|---|---|---|---|")
    lines = [head]
    for r in results:
        per = r["per_n"].values()
        worst = max(p["max_diff"] for p in per)
        differ, rows = sum(p["differ"] for p in per), sum(p["rows"] for p in per)
        t = r["timing"]
        lines.append(f"| {r['setting']['name']} | {'yes' if worst == 0 else 'no'} | {'yes' if differ == 0 else 'no'} "
                     f"| {differ}/{rows} | {fmt_diff(worst)} | {t['tok_s']:.1f} | {t['ms2']:.0f} | {t['ms8']:.0f} "
                     f"| {load(r)} |")
    lines += ["", "| setting | " + " | ".join(f"n={n}: max diff, differing" for n in sizes) + " |",
              "|---|" + "---|" * len(sizes)]
    for r in results:
        cells = [f"{fmt_diff(p['max_diff'])}, {p['differ']}/{p['rows']}" for p in r["per_n"].values()]
        lines.append(f"| {r['setting']['name']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--gguf", default="/tmp/gguf/qwen2.5-coder-1.5b.gguf")
    ap.add_argument("--prompts", type=int, default=2)
    ap.add_argument("--tokens", type=int, default=112, help="greedy tokens per prompt")
    ap.add_argument("--sizes", type=lambda v: [int(x) for x in v.split(",")], default=[2, 4, 8, 16])
    ap.add_argument("--only", default="", help="setting names separated by semicolons")
    ap.add_argument("--timing-only", action="store_true", help="only the timings, --rounds times each")
    ap.add_argument("--rounds", type=int, default=2, help="with --timing-only: rounds over the settings")
    ap.add_argument("--json", type=Path, help="write every result here")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        job = json.loads(sys.stdin.read())
        r = run_setting(job["gguf"], Setting(**job["setting"]), job["prompts"], job["tokens"], job["sizes"])
        print(json.dumps(r))
        return
    wanted = {w.strip() for w in args.only.split(";") if w.strip()}
    prompts = load_prompts(args.prompts)
    print(f"prompts of {[len(p) for p in prompts]} tokens, {args.tokens} greedy tokens each", flush=True)
    results = []
    for _ in range(args.rounds if args.timing_only else 1):
        for s in SETTINGS:
            if not wanted or s.name in wanted:
                results.append(child(s, args, prompts))
                print(f"done: {s.name}", flush=True)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=1))
    print(timing_table(results) if args.timing_only else table(results, args.sizes))


if __name__ == "__main__":
    main()
