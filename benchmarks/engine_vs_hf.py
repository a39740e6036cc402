"""Issue 2 benchmark: target alone vs this engine (static K) vs transformers assisted generation.

Greedy, default pair (in --dtype, default auto), HumanEval prompts; the three methods run prompt by prompt,
interleaved, so machine noise hits them alike. Prints tokens/s, ratios measured in this run,
and whether every output is identical to the target alone (first divergence and its margin
otherwise).

    python benchmarks/engine_vs_hf.py --prompts 8 --max-new-tokens 128 --k 5
"""

from __future__ import annotations

import argparse
import time

import torch

from vocabtrim import kernels, models
from vocabtrim.bench.data import humaneval
from vocabtrim.bench.identity import divergence
from vocabtrim.drafters import ModelDrafter
from vocabtrim.engine import Engine, Stop
from vocabtrim.policies import Policy


def hf_assisted(target, draft, ids: list[int], max_new: int, k: int) -> list[int]:
    inp = torch.tensor([ids])
    out = target.generate(inp, attention_mask=torch.ones_like(inp), assistant_model=draft,
                          max_new_tokens=max_new, do_sample=False, num_assistant_tokens=k,
                          num_assistant_tokens_schedule="constant",
                          assistant_confidence_threshold=0.0)
    return out[0, len(ids):].tolist()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--prompts", type=int, default=8)
    ap.add_argument("--max-new-tokens", type=int, default=128)
    ap.add_argument("--k", type=int, default=5)
    ap.add_argument("--dtype", default="auto", choices=kernels.DTYPES)
    args = ap.parse_args()
    torch.manual_seed(0)
    tgt, drf = (models.load(m, dtype=args.dtype) for m in (models.DEFAULT_TARGET, models.DEFAULT_DRAFT))
    alone, spec = Engine(tgt.model), Engine(tgt.model, ModelDrafter(drf.model, tgt.model))
    stop = Stop(models.stop_token_ids(tgt))
    methods = {
        "target alone": lambda ids, n: alone.generate(ids, n, Policy(args.k), stop=stop)[0],
        f"vocabtrim K={args.k}": lambda ids, n: spec.generate(ids, n, Policy(args.k), stop=stop)[0],
        f"transformers K={args.k}": lambda ids, n: hf_assisted(tgt.model, drf.model, ids, n, args.k),
    }
    warm = models.encode_prompt(tgt.tokenizer, "Say hello.")
    with torch.inference_mode():
        for run in methods.values():
            run(warm, 8)
    tokens = dict.fromkeys(methods, 0)
    seconds = dict.fromkeys(methods, 0.0)
    mismatches = []
    for q in humaneval(0, args.prompts):
        ids = models.encode_prompt(tgt.tokenizer, q.turns[0])
        outs = {}
        for name, run in methods.items():
            t0 = time.perf_counter()
            with torch.inference_mode():
                outs[name] = run(ids, args.max_new_tokens)
            seconds[name] += time.perf_counter() - t0
            tokens[name] += len(outs[name])
        ref = outs["target alone"]
        for name, out in outs.items():
            d = divergence(tgt.model, ids, ref, out)
            if d:
                mismatches.append((q.id, name, d))
        print(q.id, {n: f"{len(o)} tok" for n, o in outs.items()}, flush=True)
    base = tokens["target alone"] / seconds["target alone"]
    print(f"\n{'method':26} {'tokens':>7} {'tok/s':>7} {'vs target':>10}")
    for name in methods:
        tps = tokens[name] / seconds[name]
        print(f"{name:26} {tokens[name]:7d} {tps:7.2f} {tps / base:9.2f}x")
    ours, peer = list(methods)[1:]
    print(f"\nvocabtrim / transformers: {tokens[ours] / seconds[ours] / (tokens[peer] / seconds[peer]):.2f}x")
    if not mismatches:
        print("all outputs identical to the target alone")
    for qid, name, d in mismatches:
        kind = "numerical tie" if d["tie"] else "MISMATCH"
        print(f"{kind}: {qid} {name} at token {d['position']}, margin {d['margin']}")


if __name__ == "__main__":
    main()
