"""Issue 3 benchmark: sweep the trimmed head size K and compare calibration sources.

Default pair, `auto` dtype, greedy, static K=5 drafts. Counts come from HumanEval problems
disjoint from the evaluation problems (target- and drafter-generated answers) and from the
Python standard library's source (raw). Each K runs twice: the map plus the prompt's own
tokens (vocabtrim's default) and the map alone (the paper). Every configuration runs on
every evaluation prompt, interleaved. Prints per configuration: tau, acceptance, cost
ratio c, MBSU and tokens/s (wall-clock and decode-only), each also as a ratio to the
untrimmed drafter measured in the same run; writes sweep.png (MBSU, tau and tokens/s
against K).

    python benchmarks/vocabtrim_sweep.py --eval 16 --calib 128 --out results/sweep

A focused, noise-resistant comparison of one K with the untrimmed drafter (each prompt run
three times per head, the fastest kept, with a bootstrap interval of the speed-up):

    python benchmarks/vocabtrim_sweep.py --eval 36 --keeps 16384 --sources "" --no-map-only \
        --repeats 3 --out results/ab
"""

from __future__ import annotations

import argparse
import json
from dataclasses import replace
from pathlib import Path

from vocabtrim import prompts
from vocabtrim.assembly import Assembler, Parts, EngineSettings, parse_method
from vocabtrim.bench.common import engine_method, identity_check, load_pair, warm_up
from vocabtrim.bench.report import pyplot, save_figure, summarize
from vocabtrim.bench.run import run_matrix
from vocabtrim.calibrate import (
    calibration_prompts,
    count_tokens,
    generate_fn,
    load_items,
    target_counts,
    tokenize_fn,
)
from vocabtrim.data import humaneval
from vocabtrim.files import atomic_write
from vocabtrim.sampling import Sampling
from vocabtrim.tokenmap import trim
from vocabtrim.vocab import tokenizer_fingerprint


def all_counts(args: argparse.Namespace, tgt, drf, exclude: set[str]) -> dict:
    """Token counts per calibration source: the target's answers (the ones `vocabtrim bench`
    calibrates with: same prompts, same cache), then the drafter's answers and raw text."""
    spec = {"data": "humaneval", "n": args.calib, "tokens": args.calib_tokens}
    print("counting target tokens", flush=True)
    counts = {"target": target_counts(spec, exclude, tgt, drf)}
    calib_prompts = calibration_prompts(spec, exclude)
    for source in [x for x in args.sources.split(",") if x]:
        meta = {"source": source, "tokenizer": tokenizer_fingerprint(drf.tokenizer)}
        if source == "raw":
            items, fn = load_items("stdlib"), tokenize_fn(drf.tokenizer)
        else:
            alone = Assembler(Parts(drf)).build(parse_method("ar"))
            items, fn = calib_prompts, generate_fn(*alone, drf, args.calib_tokens, Sampling(), 0)
            meta.update(data=f"humaneval[-{args.calib}:]", max_new_tokens=args.calib_tokens)
        print(f"counting {source} tokens", flush=True)
        counts[source] = count_tokens(items, args.out / f"counts-{source}.safetensors", meta,
                                      drf.config.vocab_size, fn, resume=True)
    return counts


def print_table(summary: dict, dtype: str) -> None:
    """Each configuration against the untrimmed drafter of the same run."""
    ms = summary["methods"]
    full = ms["full"]["overall"]
    print(f"\ndtype {dtype}; calibration tokens: {summary['calibration_tokens']}")
    print(f"{'config':20} {'cover':>6} {'tau':>6} {'accept':>7} {'c':>6} {'MBSU':>6} {'tok/s':>6}"
          f" {'decode':>6} {'dMBSU':>7} {'dtok/s':>7} {'95% CI':>15} {'ddecode':>7} {'dtau':>7}  identical")
    for n, m in ms.items():
        o = m["overall"]
        c = o["cost_ratio"]
        cov = summary["coverage"].get(n.removesuffix(" map only"), 1.0)
        print(f"{n:20} {cov:6.3f} {o['tau']:6.2f} {o['acceptance_rate']:7.3f} {c:6.3f} {o['mbsu']:6.3f} "
              f"{o['tokens_per_second']:6.2f} {o['decode_tokens_per_second']:6.2f} "
              f"{o['mbsu'] / full['mbsu'] - 1:+7.1%} {o['speedup'] - 1:+7.1%} {ci(o['speedup_ci']):>15} "
              f"{o['decode_tokens_per_second'] / full['decode_tokens_per_second'] - 1:+7.1%} "
              f"{o['tau'] / full['tau'] - 1:+7.1%}  {m.get('identical', 'baseline')}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--eval", type=int, default=16, help="HumanEval problems 0..N-1 are evaluated")
    ap.add_argument("--calib", type=int, default=128, help="the last N HumanEval problems calibrate")
    ap.add_argument("--calib-tokens", type=int, default=128)
    ap.add_argument("--max-new-tokens", type=int, default=128)
    ap.add_argument("--keeps", default="65536,32768,16384,8192,4096")
    ap.add_argument("--sources-k", type=int, default=16384, help="K at which the sources are compared")
    ap.add_argument("--sources", default="draft,raw", help="other calibration sources ('' for none)")
    ap.add_argument("--map-only", action=argparse.BooleanOptionalAction, default=True,
                    help="also run each K with the map alone (the paper's head)")
    ap.add_argument("--repeats", type=int, default=1, help="runs per (prompt, config); the fastest is kept")
    ap.add_argument("--k", type=int, default=5, help="static draft length")
    ap.add_argument("--out", type=Path, default=Path("results/sweep"))
    args = ap.parse_args()
    tgt, drf, stop = load_pair()
    vocab = drf.config.vocab_size
    greedy = Sampling()

    evaluated = humaneval(0, args.eval)
    counts = all_counts(args, tgt, drf, {q.turns[0] for q in evaluated})
    sources = [x for x in args.sources.split(",") if x]
    always = sorted(prompts.stop_token_ids(drf))
    keeps = [int(k) for k in args.keeps.split(",")]
    # Each K twice: the map plus the prompt's own tokens (our default) and the map alone (the paper).
    maps = {f"K={k}": trim(counts["target"], keep=k, always=always) for k in keeps}
    for source in sources:
        maps[f"{source}@{args.sources_k}"] = trim(counts[source], keep=args.sources_k, always=always)
    pair = Parts(tgt, drf, settings=EngineSettings(draft_len=args.k))

    def vt(kept, prompt_tokens: bool = True):  # an engine trimmed to one map, and its policy
        return Assembler(replace(pair, kept=kept, settings=replace(pair.settings, prompt_tokens=prompt_tokens))).build(parse_method("sd+vt"))

    engines = {"full": Assembler(pair).build(parse_method("sd")),
               **{n: vt(tm.kept_ids) for n, tm in maps.items()},
               **{f"K={k} map only": vt(maps[f"K={k}"].kept_ids, False) for k in keeps if args.map_only}}
    methods = [engine_method(n, *e, greedy, 0, stop) for n, e in engines.items()]
    warm_up(methods, tgt.tokenizer)
    records = run_matrix(evaluated, methods, tgt.tokenizer, args.max_new_tokens,
                         args.out / "results.jsonl", resume=True, repeats=args.repeats)
    summary = summarize(records, reference="full", check=identity_check(engines["full"][0].target))
    summary["coverage"] = {n: tm.meta["coverage"] for n, tm in maps.items()}
    summary["calibration_tokens"] = {s: c.meta["tokens"] for s, c in counts.items()}
    atomic_write(args.out / "sweep.json", lambda tmp: Path(tmp).write_text(json.dumps(summary, indent=1)))

    ms = summary["methods"]
    print_table(summary, tgt.dtype)
    if args.map_only:  # the plot sets each K's map-only head beside the default one
        plot(ms, keeps, vocab, args.out / "sweep.png")
        print(f"\nwrote {args.out / 'sweep.png'}")


def ci(interval: list[float] | None) -> str:
    """A speed-up's 95% interval as relative gains."""
    return "" if interval is None else f"{interval[0] - 1:+.1%}..{interval[1] - 1:+.1%}"


def plot(ms: dict, keeps: list[int], vocab: int, path: Path) -> None:
    plt = pyplot()
    xs = [vocab] + keeps
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    for suffix, label, style in (("", "map + prompt tokens", "-"), (" map only", "map only (paper)", "--")):
        names = ["full"] + [f"K={k}{suffix}" for k in keeps]
        for ax, key, name, mark in ((left, "mbsu", "MBSU", "o"), (left, "tau", "tau", "s"),
                                    (right, "speedup", "tokens/s vs full head", "^")):
            ax.plot(xs, [ms[n]["overall"][key] for n in names], mark + style, label=f"{name}, {label}")
    for ax in (left, right):
        ax.set_xscale("log", base=2)
        ax.set_xticks(xs, ["full\n151,936"] + [f"{k // 1024}k" for k in keeps])
        ax.set_xlabel("drafter LM head rows K (target-generated calibration)")
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
    right.axhline(1.0, color="gray", lw=0.8)
    fig.suptitle("VocabTrim on Qwen2.5-Coder 0.5B -> 1.5B, HumanEval, greedy, K=5 drafts", fontsize=10)
    fig.tight_layout()
    save_figure(fig, path)


if __name__ == "__main__":
    main()
