"""The drafter on ggml: what a draft step costs with the full head, with the hidden state
only, and with the hidden state and a VocabTrim head of K rows in torch.

For the 0.5B GGUF drafter (Q5_0 body, Q8_0 output head of 151,936 rows) this builds a
~200-token context (a HumanEval chat prompt and the drafter's own greedy continuation),
then times 64 one-token decodes after it, each route in a context of its own:

- logits: a plain context, the full head computed by llama.cpp (one [1, vocab] output);
- embeddings: `embeddings=True`, pooling NONE, the final hidden state read with
  `llama_get_embeddings_ith` (llama.cpp still builds and computes the output matmul:
  the step costs what the logits route costs, and every token of a batch is an output);
- callback: the same with an eval callback (cb_eval) that asks for no node: what a Python
  callback called on each of the graph's ~800 nodes costs by itself;
- stopped: the same with an eval callback that lets the graph run up to the final
  RMSNorm's node and stops it there, so the head is never computed;
- then the K kept rows of the GGUF's own head (dequantized with `gguf.quants.dequantize`)
  multiplied by torch on the hidden state: fp32, fbgemm packed-fp16 and int4 (bf16) as
  vocabtrim's kernels hold them.

It checks that the hidden state is the post-norm one: hidden @ head.T against the logits
route's logits (max |diff|, argmax over all 64 steps; ggml's own head quantizes the
activations to Q8_0, so they agree to ~1e-2, not bitwise), that the embeddings context's
logits equal the logits context's bitwise and that the stopped graph's hidden state equals
the unstopped one's bitwise. Timings are indicative (2 shared cores; it waits up to 15
minutes for any compile to finish first).

    PYTHONPATH=src python benchmarks/ggml_drafter.py --gguf /tmp/gguf/qwen2.5-coder-0.5b.gguf --keep 16384

Reuses ggml_invariance.py's context wrapper (same folder).
"""

from __future__ import annotations

import argparse
import ctypes
import statistics
import time
from pathlib import Path

import numpy as np
import torch
from ggml_invariance import Ctx, Setting, load_prompts, wait_quiet


class StopAfter:
    """An eval callback (llama_context_params.cb_eval) under which the scheduler computes
    the graph up to the final norm and then stops (ggml-backend.cpp,
    ggml_backend_sched_compute_splits: a callback that answers false after a node it asked
    for ends the graph's computation). The final norm's node is called "result_norm"
    (models/qwen2.cpp), renamed "result_embd_pooled" in an embeddings context with pooling
    NONE (llm_graph_context::build_pooling names the same tensor again)."""

    def __init__(self, names: tuple[str, ...] = ("result_norm", "result_embd_pooled")):
        import llama_cpp as ll

        lib = ctypes.CDLL(str(Path(ll.__file__).parent / "lib" / "libggml-base.so"))
        lib.ggml_get_name.restype, lib.ggml_get_name.argtypes = ctypes.c_char_p, [ctypes.c_void_p]
        self.get_name, self.names, self.known = lib.ggml_get_name, {n.encode() for n in names}, {}
        self.stops = 0
        self.fn = ll.ggml_backend_sched_eval_callback(self._cb)

    def _cb(self, t: int, ask: bool, data: int) -> bool:
        if not ask:
            self.stops += 1
            return False  # the asked-for node is computed: stop the graph here
        hit = self.known.get(t)
        if hit is None:
            hit = self.known[t] = self.get_name(t) in self.names
        return hit


def context_tokens(path: str, prompt: list[int], length: int) -> list[int]:
    """The prompt and the drafter's greedy continuation, `length` tokens in all."""
    ctx = Ctx(path, Setting("logits"))
    ctx.decode(prompt, 0, 1)
    seq = list(prompt)
    while len(seq) < length:
        seq.append(int(ctx.logits(1)[0].argmax()))
        ctx.decode(seq[-1:], len(seq) - 1, 1)
    ctx.close()
    return seq


def route(path: str, seq: list[int], context: int, steps: int, mode: str) -> dict:
    """Prefill seq[:context], then `steps` one-token decodes in one route ('logits',
    'embeddings', 'callback': embeddings with a callback that stops nothing, the
    callback's own cost, or 'stopped'): ms of the prefill, ms of each step, what each
    step read."""
    stop = {"stopped": StopAfter(), "callback": StopAfter(())}.get(mode)  # callback: asks for no node
    ctx = Ctx(path, Setting(mode), embeddings=mode != "logits", callback=stop and stop.fn)
    prefill = ctx.decode(seq[:context], 0, 1)
    ctx.decode(seq[context:context + 1], context, 1)  # warm-up, dropped
    ms, logits, hidden = [], [], []
    for i in range(1, steps + 1):
        ms.append(1000 * ctx.decode(seq[context + i:context + i + 1], context + i, 1))
        if mode == "logits":
            logits.append(ctx.logits(1)[0])
        else:
            hidden.append(ctx.hidden(0))
            if mode == "embeddings":
                logits.append(ctx.logits(1)[0])
    ctx.close()
    return {"prefill_ms": 1000 * prefill, "step_ms": ms, "logits": np.array(logits), "hidden": np.array(hidden),
            "stops": stop.stops if stop else None}


def gguf_head(path: str) -> torch.Tensor:
    """The drafter's output head [vocab, hidden] in fp32, dequantized from the GGUF (the
    token embedding where the file ties them)."""
    import gguf

    tensors = {t.name: t for t in gguf.GGUFReader(path).tensors}
    t = tensors.get("output.weight") or tensors["token_embd.weight"]
    return torch.from_numpy(gguf.quants.dequantize(t.data, t.tensor_type).copy())


def heads(rows: torch.Tensor) -> dict[str, torch.nn.Module]:
    """The kept rows as the three kinds of torch head vocabtrim's drafters use."""
    from vocabtrim import kernels

    out: dict[str, torch.nn.Module] = {"fp32": kernels.plain_linear(rows.contiguous(), None)}
    if kernels.packed_available():
        out["packed-fp16"] = kernels.PackedLinear(rows)
    out["int4 (bf16)"] = kernels.QuantLinear.quantize(rows, None, "int4", act=torch.bfloat16)
    return out


def head_ms(head: torch.nn.Module, hidden: np.ndarray) -> float:
    """Median ms of the head on each step's hidden state (one row)."""
    times = []
    with torch.inference_mode():
        for h in torch.from_numpy(hidden):
            t0 = time.perf_counter()
            head(h[None])
            times.append(1000 * (time.perf_counter() - t0))
    return statistics.median(times)


def q8_0(x: torch.Tensor) -> torch.Tensor:
    """x as ggml's Q8_0 holds activations for a Q8_0 weight (quantize_row_q8_0_ref: blocks
    of 32, scale amax/127 stored in fp16), dequantized."""
    b = x.reshape(len(x), -1, 32)
    d = b.abs().amax(-1, keepdim=True) / 127
    q = torch.round(b * torch.where(d > 0, 1 / d, 0))
    return (q * d.half().float()).reshape(x.shape)


def checks(full: torch.Tensor, logits: dict, hidden: dict) -> list[str]:
    """Is the hidden state the post-norm one, and do the routes agree?"""
    want = torch.from_numpy(logits["logits"])
    h = torch.from_numpy(hidden["embeddings"])
    got, got_q = h @ full.T, q8_0(h) @ full.T
    same_arg = int((got.argmax(1) == want.argmax(1)).sum())
    diff, span = float((got - want).abs().max()), float(want.abs().max())
    return [
        f"hidden @ head.T vs logits route: max |diff| {diff:.4g} (|logits| up to {span:.3g}), argmax equal on "
        + f"{same_arg}/{len(want)} steps; with the hidden state quantized to Q8_0 first as ggml does: "
        + f"max |diff| {float((got_q - want).abs().max()):.3g}",
        f"embeddings context's logits == logits context's, bitwise: {np.array_equal(logits['embeddings'], logits['logits'])}",
        f"stopped graph's hidden == unstopped one's, bitwise: {np.array_equal(hidden['stopped'], hidden['embeddings'])}",
    ]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--gguf", default="/tmp/gguf/qwen2.5-coder-0.5b.gguf")
    ap.add_argument("--keep", type=int, default=16384, help="rows of the trimmed head")
    ap.add_argument("--context", type=int, default=200)
    ap.add_argument("--steps", type=int, default=64)
    ap.add_argument("--threads", type=int, default=2, help="torch threads for the head")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    seq = context_tokens(args.gguf, load_prompts(1)[0], args.context + args.steps + 1)
    quiet = wait_quiet()
    modes = ("logits", "embeddings", "callback", "stopped")
    runs = {m: route(args.gguf, seq, args.context, args.steps, m) for m in modes}
    full = gguf_head(args.gguf)
    torch_heads = heads(full[: args.keep])
    ms = {k: head_ms(h, runs["stopped"]["hidden"]) for k, h in torch_heads.items()}
    print(f"context {args.context} tokens, {args.steps} steps; compile seen before timing: {quiet}")
    print("| route | prefill ms | step ms (median) | + head of K rows: " + " | ".join(ms) + " |")
    print("|---|---|---|" + "---|" * len(ms))
    for mode, r in runs.items():
        step = statistics.median(r["step_ms"])
        cells = " | ".join("-" if mode == "logits" else f"{step + v:.2f}" for v in ms.values())
        print(f"| {mode} | {r['prefill_ms']:.0f} | {step:.2f} | {cells} |")
    print(f"head alone, K={args.keep}: " + ", ".join(f"{k} {v:.2f} ms" for k, v in ms.items()))
    print(f"graph stops seen: {runs['stopped']['stops']} (one per decode)")
    logits = {m: runs[m]["logits"] for m in ("logits", "embeddings")}
    hidden = {m: runs[m]["hidden"] for m in ("embeddings", "stopped")}
    print("\n".join(checks(full, logits, hidden)))


if __name__ == "__main__":
    main()
