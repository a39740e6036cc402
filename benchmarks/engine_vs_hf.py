"""Issue 2 benchmark: target alone vs this engine (static K) vs transformers assisted generation.

Greedy, default pair (in --dtype, default auto), HumanEval prompts. The three methods (`ar`,
`sd`, `hf`) run through `vocabtrim bench`'s runner, prompt by prompt, interleaved, so machine
noise hits them alike; transformers drafts K tokens a round like the engine (constant
schedule, no confidence stop). Prints the bench tables (tokens/s, speed-up over the target
alone with its 95% interval, whether every output is identical to the target alone, a
divergence's margin otherwise) and vocabtrim / transformers; writes results.jsonl,
summary.json, summary.md and the plots to --out.

    python benchmarks/engine_vs_hf.py --prompts 8 --max-new-tokens 128 --k 5
"""

from __future__ import annotations

import argparse
from pathlib import Path

from vocabtrim import kernels
from vocabtrim.assembly import Assembler, Parts, EngineSettings
from vocabtrim.bench import methods as bm
from vocabtrim.bench.common import identity_check, load_pair, warm_up
from vocabtrim.bench.report import markdown, summarize, write_reports
from vocabtrim.bench.run import Method, run_matrix
from vocabtrim.data import humaneval
from vocabtrim.sampling import Sampling


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--prompts", type=int, default=8)
    ap.add_argument("--max-new-tokens", type=int, default=128)
    ap.add_argument("--k", type=int, default=5)
    ap.add_argument("--dtype", default="auto", choices=kernels.DTYPES)
    ap.add_argument("--out", type=Path, default=Path("results/engine_vs_hf"))
    ap.add_argument("--resume", action="store_true", help="continue an interrupted run in --out")
    args = ap.parse_args()
    tgt, drf, stop = load_pair(args.dtype)
    greedy = Sampling()
    assembler = Assembler(Parts(tgt, drf, settings=EngineSettings(draft_len=args.k)))
    matrix = bm.build(bm.parse_methods("ar,sd"), assembler, greedy, 0, stop)
    hf = bm.HFGenerate(tgt.model, greedy, 0, stop, assistant=drf.model, num_assistant_tokens=args.k,
                       num_assistant_tokens_schedule="constant", assistant_confidence_threshold=0.0)
    matrix.append(Method("hf", hf))
    warm_up(matrix, tgt.tokenizer)
    records = run_matrix(humaneval(0, args.prompts), matrix, tgt.tokenizer, args.max_new_tokens,
                         args.out / "results.jsonl", resume=args.resume)
    summary = summarize(records, "ar", True, identity_check(assembler.target))
    summary["settings"] = {**vars(args), "out": str(args.out), "dtype": tgt.dtype}
    write_reports(summary, args.out)
    print(markdown(summary))
    ours, peer = (summary["methods"][n]["overall"]["tokens_per_second"] for n in ("sd", "hf"))
    print(f"vocabtrim / transformers: {ours / peer:.2f}x (K={args.k} both)")
    print(f"wrote {args.out}/results.jsonl, summary.md, summary.json and plots")


if __name__ == "__main__":
    main()
