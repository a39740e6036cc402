"""results.jsonl -> per-method, per-category summary, Markdown tables and plots.

Aggregates are ratios of sums (tokens over seconds, tokens over target forwards), not
means of per-prompt ratios, so long answers weigh as much as they cost.
"""

from __future__ import annotations

import json
import random
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path

from ..backend import label
from ..errors import VocabtrimError
from ..files import atomic_write, check_parent
from ..metrics import COST_CONVENTION, GenerationStats
from .run import is_results, read_results

CheckFn = Callable[[list[int], list[int], list[int]], dict | None]
TABLE_HEADER = "| method | backend | tok/s | speed-up (95% CI) | tau | acceptance | mean draft | c | MBSU | identical to ar |"
PLOT_MARK = {"Source": "vocabtrim bench"}  # a PNG text chunk: how a plot is known as ours before replacing it


def aggregate(recs: list[dict]) -> dict:
    """One method's records summed into one `GenerationStats`, plus the time split."""
    total = GenerationStats()
    for r in recs:
        total.add(GenerationStats.from_dict(r))
    seconds = total.seconds
    out = {
        "prompts": len(recs), "tokens": total.new_tokens, "seconds": seconds,
        "tokens_per_second": total.tokens_per_second, "tau": total.tau,
        "acceptance_rate": total.acceptance_rate if total.draft_lengths else None,
        "mean_draft_length": total.mean_draft_length, "mbsu": total.mbsu,
        "cost_ratio": total.cost_ratio if total.drafter_forwards else None,  # c per drafter forward, in bytes
        "suffix_rounds": total.suffix_rounds,
        "time_split": {k: getattr(total, f"{k}_s") / seconds if seconds else 0.0
                       for k in ("prefill", "draft", "verify")},
    }
    decode = seconds - total.prefill_s  # the prompt's cost is the same for all methods
    out["decode_tokens_per_second"] = total.new_tokens / decode if decode > 0 else 0.0
    return out


def speedup_interval(recs: list[dict], base: list[dict], draws: int = 2000) -> list[float] | None:
    """95% bootstrap interval of the tokens/s ratio to the baseline, resampling questions
    with their baseline runs (paired): how far the speed-up would move on another draw of
    prompts and of machine noise. None with fewer than two shared questions."""
    ref = {r["question_id"]: r for r in base}
    pairs = [(r, ref[r["question_id"]]) for r in recs if r["question_id"] in ref]
    if len(pairs) < 2:
        return None
    rng = random.Random(0)
    ratios = sorted(_ratio(rng.choices(pairs, k=len(pairs))) for _ in range(draws))
    return [ratios[int(0.025 * draws)], ratios[int(0.975 * draws) - 1]]


def _ratio(pairs: list[tuple[dict, dict]]) -> float:
    """tokens/s of the first of each pair over tokens/s of the second, as ratios of sums."""
    speed = [sum(p[i]["new_tokens"] for p in pairs) / sum(p[i]["seconds"] for p in pairs) for i in (0, 1)]
    return speed[0] / speed[1]


def compare(recs: list[dict], base: list[dict], check: CheckFn | None) -> list[dict]:
    """Turns whose greedy output differs from the baseline's, with the divergence found."""
    ref = {r["question_id"]: r["turns"] for r in base}
    out = []
    for r in recs:
        for i, (t, b) in enumerate(zip(r["turns"], ref.get(r["question_id"], []))):
            if t["token_ids"] != b["token_ids"]:
                d = check(b["prompt_ids"], b["token_ids"], t["token_ids"]) if check else None
                out.append({"question_id": r["question_id"], "turn": i, **(d or {"tie": False})})
                break  # later turns follow different histories
    return out


ALONE = ("ar", "llamacpp")  # the target alone: ours, and llama.cpp's own loop


def summarize(records: list[dict], reference: str = "ar", greedy: bool = True,
              check: CheckFn | None = None) -> dict:
    """Per method and category: speeds over the fastest target alone in the records (ours
    or llama.cpp's: the baseline a user would otherwise run), and greedy identity with
    `reference` where both ran the same weights."""
    by_method: dict[str, list[dict]] = defaultdict(list)
    for r in records:
        by_method[r["method"]].append(r)
    alone = [m for m in ALONE if m in by_method] or [reference]
    baseline = max(alone, key=lambda m: aggregate(by_method[m])["tokens_per_second"] if by_method.get(m) else 0)
    base = by_method.get(baseline, [])
    base_cat = {c: aggregate([r for r in base if r["category"] == c])
                for c in {r["category"] for r in base}}
    base_all = aggregate(base) if base else None
    methods = {}
    for name, recs in by_method.items():
        cats = {}
        for c in sorted({r["category"] for r in recs}):
            a = aggregate([r for r in recs if r["category"] == c])
            b = base_cat.get(c)
            a["speedup"] = a["tokens_per_second"] / b["tokens_per_second"] if b else None
            cats[c] = a
        overall = aggregate(recs)
        overall["speedup"] = (overall["tokens_per_second"] / base_all["tokens_per_second"]
                              if base_all else None)
        overall["speedup_ci"] = speedup_interval(recs, base) if name != baseline else None
        entry = {"overall": overall, "categories": cats, "backend": recs[0].get("backend", "torch"),
                 **({"drafts_on": recs[0]["drafts_on"]} if "drafts_on" in recs[0] else {})}
        ref = by_method.get(reference, [])
        if greedy and ref and name != reference:
            if entry["backend"] != ref[0].get("backend", "torch"):  # other weights or other kernels
                entry["identical"] = "n/a: another backend"
                methods[name] = entry
                continue
            diffs = compare(recs, ref, check)
            entry["mismatches"] = diffs
            entry["identical"] = ("yes" if not diffs else
                                  f"ties only ({len(diffs)})" if all(d["tie"] for d in diffs) else
                                  f"NO: {sum(not d['tie'] for d in diffs)} real mismatch(es)")
        methods[name] = entry
    return {"baseline": baseline, "reference": reference, "greedy": greedy, "cost_convention": COST_CONVENTION,
            "methods": methods}


def _f(x, fmt="{:.2f}") -> str:
    return "-" if x is None else fmt.format(x)


def markdown(summary: dict) -> str:
    """Spec-Bench-style tables: overall per method, then speed-up per category."""
    ms = summary["methods"]
    lines = [TABLE_HEADER, "|---|---|---|---|---|---|---|---|---|---|"]
    for name, m in ms.items():
        o = m["overall"]
        ci = o.get("speedup_ci")
        ci = f" ({ci[0]:.2f}-{ci[1]:.2f})" if ci else ""
        lines.append(f"| {name} | {label(m.get('backend', 'torch'), m.get('drafts_on'))} | {o['tokens_per_second']:.2f} | {_f(o['speedup'], '{:.2f}x')}{ci} | "
                     f"{o['tau']:.2f} | {_f(o['acceptance_rate'])} | {_f(o['mean_draft_length'])} | "
                     f"{_f(o['cost_ratio'], '{:.3f}')} | {o['mbsu']:.2f} | {m.get('identical', '-')} |")
    base = summary["baseline"]
    over = (f"Speed-up over `{base}`, the fastest target alone in this run" if base in ms else
            "No speed-ups: no target alone (`ar`, `llamacpp`) in this run")
    lines += ["", f"{over}; identity with `{summary.get('reference', 'ar')}`'s greedy output.",
              "", ("c: bytes a drafter forward reads over bytes a target forward reads (weights at their "
                   "stored size); MBSU: tokens per target-forward-equivalent of bytes read.")]
    cats = sorted({c for m in ms.values() for c in m["categories"]})
    lines += ["", f"Speed-up over `{base}` (tokens/s ratio) per category:", "",
              "| method | " + " | ".join(cats) + " |", "|---" * (len(cats) + 1) + "|"]
    for name, m in ms.items():
        cells = [_f(m["categories"].get(c, {}).get("speedup"), "{:.2f}x") for c in cats]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines += ["", ("Where the time goes (share of wall-clock; `other` is Python, sampling and cache "
                   "handling between forwards):"), "",
              "| method | prefill | drafting | verification | other | decode tok/s |", "|---|---|---|---|---|---|"]
    for name, m in ms.items():
        split = m["overall"]["time_split"]
        if not any(split.values()):  # a peer we time only as a whole (transformers)
            lines.append(f"| {name} | - | - | - | - | - |")
            continue
        cells = [split["prefill"], split["draft"], split["verify"], 1 - sum(split.values())]
        lines.append(f"| {name} | " + " | ".join(f"{x:.0%}" for x in cells) +
                     f" | {m['overall']['decode_tokens_per_second']:.2f} |")
    bad = {n: m["mismatches"] for n, m in ms.items() if any(not d["tie"] for d in m.get("mismatches", []))}
    if bad:
        lines += ["", "**GREEDY MISMATCHES (a bug):** " + json.dumps(bad)]
    if "time_s" in summary:
        lines += ["", run_time(summary)]
    return "\n".join(lines) + "\n"


def run_time(summary: dict) -> str:
    """Where a bench run's wall-clock went: its phases, and the generations per method
    (resumed records count the time they took in the earlier run)."""
    spent = summary["time_s"]
    per_method = ", ".join(f"{n} {m['overall']['seconds'] / 60:.1f}" for n, m in summary["methods"].items())
    phases = ", ".join(f"{k} {v / 60:.1f}" + (f" ({per_method})" if k == "generations" else "")
                       for k, v in spent.items() if v >= 1)
    peak = f" Peak resident memory {summary['peak_rss_gb']:.1f} GB." if "peak_rss_gb" in summary else ""
    return f"Run time {sum(spent.values()) / 60:.1f} min: {phases}.{peak}"


def pyplot():
    """matplotlib's pyplot on the Agg backend: figures go to files, never to a screen."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, path: Path) -> Path:
    """Write `fig` as a PNG atomically (a killed run leaves no half-written image) and free it."""
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=110, metadata=PLOT_MARK))
    pyplot().close(fig)
    return path


def plot(summary: dict, out_dir: Path) -> list[Path]:
    """speedup.png (per category and overall, per method; each bar labelled with its tokens/s,
    the overall bars with their 95% interval where there is one) and tau_mbsu.png (per method)."""
    plt = pyplot()
    ms = summary["methods"]
    names = list(ms)
    cats = sorted({c for m in ms.values() for c in m["categories"]})
    groups = cats + ["overall"]
    fig, ax = plt.subplots(figsize=(max(6, 1.2 * len(groups) * len(names) / 3), 4))
    width = 0.8 / len(names)
    for i, n in enumerate(names):
        cells = [ms[n]["categories"].get(c) for c in cats] + [ms[n]["overall"]]
        xs = [j + i * width for j in range(len(groups))]
        bars = ax.bar(xs, [(a or {}).get("speedup") or 0 for a in cells], width, label=n)
        ax.bar_label(bars, [f"{a['tokens_per_second']:.1f}" if a else "" for a in cells],
                     label_type="center", rotation=90, fontsize=7)
        ci, point = ms[n]["overall"].get("speedup_ci"), ms[n]["overall"]["speedup"]
        if ci and point:
            ax.errorbar(xs[-1], point, yerr=[[point - ci[0]], [ci[1] - point]], fmt="none",
                        ecolor="black", capsize=3, lw=0.8)
    ax.set_xticks([j + 0.4 - width / 2 for j in range(len(groups))], groups, rotation=20)
    ax.axhline(1, color="grey", lw=0.8)
    ax.set_ylabel(f"speed-up over {summary['baseline']} (tokens/s)")
    ax.set_title("bars labelled with tokens/s; overall: 95% bootstrap interval", fontsize=8)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1, 1))
    fig.tight_layout()
    paths = [save_figure(fig, out_dir / "speedup.png")]
    fig, ax = plt.subplots(figsize=(6, 3.5))
    xs = range(len(names))
    ax.bar([x - 0.2 for x in xs], [ms[n]["overall"]["tau"] for n in names], 0.4, label="tau")
    ax.bar([x + 0.2 for x in xs], [ms[n]["overall"]["mbsu"] for n in names], 0.4, label="MBSU")
    ax.set_xticks(list(xs), names, rotation=20)
    ax.legend()
    fig.tight_layout()
    paths.append(save_figure(fig, out_dir / "tau_mbsu.png"))
    return paths


def write_reports(summary: dict, out_dir: Path) -> None:
    atomic_write(out_dir / "summary.json", lambda tmp: Path(tmp).write_text(json.dumps(summary, indent=1)))
    atomic_write(out_dir / "summary.md", lambda tmp: Path(tmp).write_text(markdown(summary)))
    plot(summary, out_dir)


def check_out_dir(out: Path, resume: bool) -> None:
    """Refuse, before any model loads, an --out that bench cannot fill without harm: a file,
    a path under a file, results of another run without `resume`, or a file of a name bench
    writes that bench did not write (a user's summary.md is never replaced)."""
    if out.exists() and not out.is_dir():
        raise VocabtrimError(f"--out {out} is a file; bench writes a directory there")
    check_parent(out / "results.jsonl")
    for name, ours in _OUTPUTS.items():
        path = out / name
        if (path.exists() or path.is_symlink()) and not (path.is_file() and ours(path)):
            raise VocabtrimError(f"refusing to overwrite {path}: vocabtrim bench did not write it "
                                 "(move it away or choose another --out)")
    if not resume and read_results(out / "results.jsonl"):
        raise VocabtrimError(f"{out} already holds results; pass --resume to continue or choose another --out")


def _reads(path: Path, test: Callable[[str], bool]) -> bool:
    try:
        return test(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return False


def _is_summary(text: str) -> bool:
    summary = json.loads(text)
    return isinstance(summary, dict) and {"baseline", "methods", "cost_convention"} <= summary.keys()


def _is_plot(path: Path) -> bool:
    """A PNG whose text chunks (written before the image data) carry PLOT_MARK."""
    (key, value), = PLOT_MARK.items()
    try:
        with open(path, "rb") as f:
            head = f.read(4096)
    except OSError:
        return False
    return head.startswith(b"\x89PNG") and b"tEXt" + f"{key}\0{value}".encode() in head


_OUTPUTS: dict[str, Callable[[Path], bool]] = {
    "results.jsonl": is_results,
    "summary.json": lambda p: _reads(p, _is_summary),
    "summary.md": lambda p: _reads(p, lambda text: text.startswith("| method |")),  # also before the backend column
    "speedup.png": _is_plot,
    "tau_mbsu.png": _is_plot,
}
