"""Tiny random-weight models (seconds to build), the real default pair (fetched once), the
in-process CLI runner every test uses, and the helpers several test modules share.

Tiny models are Llama-shaped on purpose: the engine must not depend on the architecture,
and transformers maps a plain tokenizers tokenizer onto Llama models unchanged. Shared
models are built on first use (cached), never when a module is imported."""

from __future__ import annotations

import functools
import gc
import itertools
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner, Result
from scipy.stats import chisquare
from tokenizers import Tokenizer, pre_tokenizers
from tokenizers import models as tk_models
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from vocabtrim.bench.run import Method
from vocabtrim.cli import main
from vocabtrim.drafters import ModelDrafter
from vocabtrim.engine import Engine
from vocabtrim.metrics import GenerationStats
from vocabtrim.policies import Step
from vocabtrim.sampling import Sampling
from vocabtrim.target import TorchTarget
from vocabtrim.tokenmap import TokenMap
from vocabtrim.vocab import tokenizer_fingerprint

TINY_TEMPLATE = ("{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}<|end|>{% endfor %}"
                 "{% if add_generation_prompt %}<|assistant|>{% endif %}")


def tiny_model(vocab: int = 64, seed: int = 0, tie: bool = False, layers: int = 2,
               context: int = 256) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=vocab, hidden_size=32, intermediate_size=64,
                      num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2,
                      max_position_embeddings=context, tie_word_embeddings=tie,
                      eos_token_id=1, bos_token_id=0, pad_token_id=0)
    model = LlamaForCausalLM(cfg).eval()
    with torch.no_grad():  # sharper logits than the default init, so drafts get accepted
        model.get_output_embeddings().weight.mul_(8)
    return model


def noisy_copy(model: LlamaForCausalLM, scale: float, seed: int) -> LlamaForCausalLM:
    """A drafter that mostly agrees with `model`: the same weights plus Gaussian noise."""
    torch.manual_seed(seed)
    other = LlamaForCausalLM(model.config).eval()
    other.load_state_dict(model.state_dict())
    with torch.no_grad():
        for p in other.parameters():
            p.add_(torch.randn_like(p) * scale * p.std().clamp_min(1e-3))
    return other


@functools.cache
def tiny_pair() -> tuple[LlamaForCausalLM, LlamaForCausalLM]:
    """The shared tiny target (64 tokens) and a drafter that mostly agrees with it."""
    target = tiny_model(64, seed=1)
    return target, noisy_copy(target, 0.3, seed=2)


def vocab_of(model: torch.nn.Module) -> int:
    return model.get_output_embeddings().out_features


def alone(target: torch.nn.Module) -> Engine:
    """An Engine of the target alone."""
    return Engine(TorchTarget(target))


def model_drafter(draft, target, kept_ids=None, prompt_tokens: bool = True) -> ModelDrafter:
    """A model drafter of `target`'s vocabulary."""
    return ModelDrafter(draft, vocab_of(target), kept_ids, prompt_tokens)


def spec_engine(target, draft=None, kept_ids=None, prompt_tokens: bool = True) -> Engine:
    """An Engine with a model drafter (the target alone when `draft` is None)."""
    drafter = None if draft is None else model_drafter(draft, target, kept_ids, prompt_tokens)
    return Engine(TorchTarget(target), drafter)


def prompts(n: int, vocab: int = 64) -> list[list[int]]:
    g = torch.Generator().manual_seed(7)
    return [torch.randint(5, vocab, (int(torch.randint(1, 12, (1,), generator=g)),),
                          generator=g).tolist() for _ in range(n)]


def greedy_step(probs: torch.Tensor) -> Step:
    """A greedy drafter forward whose distribution is exactly `probs` (a softmax of
    probs.log() rounds some of them across the cost rule's bin edges)."""
    s = Step(logits=probs.log())
    s.probs = probs
    return s


# --- losslessness under sampling: a target of 5 tokens whose every continuation's
# probability can be enumerated, and a different drafter (q differs a lot from p) ---

SMALL_V = 5
SMALL_PROMPT = [2, 3]
SMALL_SAMPLING = Sampling(temperature=0.9, top_k=4)
RUNS = 3000


@functools.cache
def small_pair() -> tuple[LlamaForCausalLM, LlamaForCausalLM]:
    return tiny_model(SMALL_V, seed=11, layers=1), tiny_model(SMALL_V, seed=12, layers=1)


@functools.cache
@torch.inference_mode()
def exact_joint(n: int, prompt: tuple[int, ...] = tuple(SMALL_PROMPT)) -> dict[tuple[int, ...], float]:
    """The small target's own probability of every n-token continuation, by enumeration."""
    target = small_pair()[0]
    out = {}
    for toks in itertools.product(range(SMALL_V), repeat=n):
        p = 1.0
        for i in range(n):
            logits = target(torch.tensor([list(prompt) + list(toks[:i])])).logits[0, -1]
            p *= float(SMALL_SAMPLING.probs(logits)[toks[i]])
        out[toks] = p
    return out


def small_counts(eng: Engine, runs: int = RUNS) -> dict[tuple[int, ...], int]:
    """How often `eng` samples each 3-token continuation of SMALL_PROMPT (with Static(2)
    drafts), over seeds 0..runs-1: what chi2_pvalue holds against exact_joint(3)."""
    from vocabtrim.policies import Static

    counts: dict[tuple[int, ...], int] = {}
    for seed in range(runs):
        out, _ = eng.generate(list(SMALL_PROMPT), 3, Static(2), SMALL_SAMPLING, seed=seed)
        counts[tuple(out)] = counts.get(tuple(out), 0) + 1
    return counts


def assert_greedy_identical_with_a_drafter(target, model, drafter=None) -> None:
    """`target` (any backend's, holding `model`'s weights) decodes greedily the same with
    `drafter` (default: a model drafter over a noisy copy of `model`) as alone, and some
    drafts are accepted."""
    from vocabtrim.policies import Static

    drafter = drafter or model_drafter(noisy_copy(model, 0.3, seed=2), model)
    alone, spec = Engine(target), Engine(target, drafter)
    accepted = 0
    for p in prompts(6):
        ref, _ = alone.generate(p, 30, Static(1))
        out, s = spec.generate(p, 30, Static(4))
        assert out == ref
        accepted += sum(s.accepted_per_round)
    assert accepted > 0


def chi2_pvalue(counts, exact, runs) -> float:
    keys = [k for k, p in exact.items() if p * runs >= 1]
    obs = [counts.get(k, 0) for k in keys] + [runs - sum(counts.get(k, 0) for k in keys)]
    exp = [exact[k] * runs for k in keys] + [runs * (1 - sum(exact[k] for k in keys))]
    return chisquare(obs, exp).pvalue


# --- files on disk ---


def tiny_tokenizer(vocab: int) -> PreTrainedTokenizerFast:
    specials = ["<s>", "<|end|>", "<|user|>", "<|assistant|>", "<|system|>"]
    words = specials + [f"w{i}" for i in range(vocab - len(specials))]
    tok = Tokenizer(tk_models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="w0"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="<|end|>",
                                   additional_special_tokens=specials[2:])
    fast.chat_template = TINY_TEMPLATE
    return fast


def save_tiny(path: Path, vocab: int = 64, seed: int = 0, tie: bool = False, context: int = 256,
              model: LlamaForCausalLM | None = None) -> Path:
    model = model or tiny_model(vocab, seed, tie, context=context)
    model.save_pretrained(path)
    tiny_tokenizer(model.config.vocab_size).save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def tiny_dirs(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("tiny")
    target = tiny_model(64, seed=1)
    return {
        "target": save_tiny(root / "target", model=target),
        "draft": save_tiny(root / "draft", model=noisy_copy(target, 0.3, seed=2)),
        "other_vocab": save_tiny(root / "other", vocab=80, seed=3),
        "short": save_tiny(root / "short", seed=4, context=16),
    }


# --- the real default pair (`real` tests), at most one copy of its target resident at a time ---


class RealPair:
    """The built-in default pair in the auto dtype, fetched and converted into the cache on
    first use. `models.load` is lazy: a model's weights load when a test first uses them and
    stay for the real tests after it, until `release` lets them go for a test that loads
    other copies of the target (the command line, the ggml and native backends)."""

    pair = None

    @classmethod
    def get(cls):
        if cls.pair is None:
            from vocabtrim import catalog, models

            cls.pair = models.load(catalog.DEFAULT_TARGET), models.load(catalog.DEFAULT_DRAFT)
        return cls.pair

    @classmethod
    def release(cls) -> None:
        cls.pair = None
        gc.collect()  # a model in a reference cycle goes now, not at some later collection


@pytest.fixture
def real_pair():
    """The real (target, draft) pair the real tests share, loaded once for all of them."""
    return RealPair.get()


@pytest.fixture
def no_real_pair() -> None:
    """For a test that loads copies of the real target itself (in this process or a child):
    the weights the pair's tests loaded are let go first (del + gc), so the two copies are
    never resident together."""
    RealPair.release()


@pytest.fixture
def fresh_real_pair(no_real_pair):
    """The pair with none of its weights loaded yet, for a test that loads other copies of
    the target and uses the pair only after them, or only the pair's drafter."""
    return RealPair.get()


REAL_ORDER = ("no_real_pair", "real_pair", "fresh_real_pair")


def pytest_collection_modifyitems(items) -> None:
    """The real tests run last, after every other test, in three groups (each in file
    order): those that load the real target themselves, while no pair is held; those that
    share the held pair (it loads once); those that let it go first. So the pair's ~10 GB
    are resident only while real tests that use them run, and beside no other copy."""
    def group(item) -> int:
        if item.get_closest_marker("real") is None:
            return -1
        return max((i for i, name in enumerate(REAL_ORDER) if name in item.fixturenames), default=0)

    items[:] = sorted(items, key=group)  # stable: file order within each group


def snapshot(root) -> dict:
    """Every path under `root` with its modification time and, for files, its bytes."""
    return {str(p.relative_to(root)): (p.stat().st_mtime_ns, p.is_file() and p.read_bytes()) for p in root.rglob("*")}


def fake_method(name, calls, fail_at=None) -> Method:
    """A bench method that records its calls and answers two tokens at once (KeyboardInterrupt
    at call `fail_at`: a run killed midway)."""
    def gen(ids, max_new):
        calls.append((name, len(ids)))
        if fail_at is not None and len(calls) == fail_at:
            raise KeyboardInterrupt
        return [7, 8], GenerationStats(new_tokens=2, target_forwards=1 if name != "ar" else 2,
                                       seconds=0.5, draft_lengths=[2] if name != "ar" else [],
                                       accepted_per_round=[1] if name != "ar" else [])
    return Method(name, gen)


@functools.cache
def tiny_fingerprint() -> str:
    """The tiny tokenizer's (64 tokens) fingerprint, as counts and token maps record it."""
    return tokenizer_fingerprint(tiny_tokenizer(64))


def token_map(ids, vocab: int = 64) -> TokenMap:
    """A token map of `ids` for the tiny tokenizer."""
    return TokenMap(torch.tensor(ids), {"k": len(ids), "vocab_size": vocab, "coverage": 0.5,
                                        "tokenizer": tiny_fingerprint()})


def cli(*args, env: dict[str, str] | None = None) -> Result:
    """Run the `vocabtrim` command in-process; arguments may be paths or numbers."""
    return CliRunner().invoke(main, [str(a) for a in args], env=env)


# --- GGUF files for the ggml target ---


def bench_gguf(path: Path, tmp_path: Path, methods: str, questions: int) -> Path:
    """`vocabtrim bench` of `methods` on the GGUF at `path` (ggml backend), `questions`
    tiny prompts, 8 new tokens each; asserts it succeeded and returns its --out."""
    data = tmp_path / "q.jsonl"
    data.write_text("".join(json.dumps({"prompt": f"w{i}w2 w{i + 1}", "category": "c"}) + "\n"
                            for i in range(5, 5 + questions)))
    out = tmp_path / "out"
    r = cli("bench", "--target", path, "--backend", "ggml", "--methods", methods, "--data", data,
            "--max-new-tokens", 8, "--out", out, env={"VOCABTRIM_CACHE": str(tmp_path / "cache")})
    assert r.exit_code == 0, r.stderr + str(r.exception)
    return out


GGUF_NAMES = {"self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
              "self_attn.o_proj": "attn_output", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
              "mlp.down_proj": "ffn_down", "input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm",
              "self_attn.q_norm": "attn_q_norm", "self_attn.k_norm": "attn_k_norm"}  # the last two: Qwen3's


def write_gguf(model: LlamaForCausalLM, path: Path, arch: str = "qwen2", extra: dict | None = None) -> Path:
    """`model`'s weights in fp32 as a GGUF llama.cpp reads: by default the `qwen2`
    architecture, whose rotary embedding is transformers' own (no permuted q and k); `llama`
    with q's and k's rows permuted as llama.cpp's converter writes them; and a vocabulary of
    plain tokens (w, 2 and their one merge w2, since tokenizers want some; then w5, w6, ...).
    Llama 3's rope scaling becomes rope_freqs.weight, as the converter writes it; `extra`:
    more tensors by name."""
    import gguf

    from vocabtrim.gguf_copy import permute

    c = model.config
    w = gguf.GGUFWriter(str(path), arch)
    for add, value in ((w.add_context_length, c.max_position_embeddings), (w.add_embedding_length, c.hidden_size),
                       (w.add_block_count, c.num_hidden_layers), (w.add_feed_forward_length, c.intermediate_size),
                       (w.add_head_count, c.num_attention_heads), (w.add_head_count_kv, c.num_key_value_heads),
                       (w.add_rope_freq_base, c.rope_parameters["rope_theta"]),
                       (w.add_layer_norm_rms_eps, c.rms_norm_eps), (w.add_bos_token_id, 0), (w.add_eos_token_id, 1)):
        add(value)
    head_dim = getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads
    if head_dim != c.hidden_size // c.num_attention_heads:  # Qwen3's small models
        w.add_key_length(head_dim), w.add_value_length(head_dim)
    w.add_file_type(gguf.LlamaFileType.ALL_F32)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("qwen2")
    w.add_chat_template(TINY_TEMPLATE)
    w.add_token_list(["<s>", "<|end|>", "w", "2", "w2"] + [f"w{i}" for i in range(5, c.vocab_size)])
    w.add_token_types([gguf.TokenType.CONTROL] * 2 + [gguf.TokenType.NORMAL] * (c.vocab_size - 2))
    w.add_token_merges(["w 2"])
    sd = {k: v.detach().float().numpy() for k, v in model.state_dict().items()}
    for i in range(c.num_hidden_layers if arch == "llama" else 0):
        for name, heads in (("q_proj", c.num_attention_heads), ("k_proj", c.num_key_value_heads)):
            sd[f"model.layers.{i}.self_attn.{name}.weight"] = permute(sd[f"model.layers.{i}.self_attn.{name}.weight"], heads)
    w.add_tensor("token_embd.weight", sd["model.embed_tokens.weight"])
    for i in range(c.num_hidden_layers):
        for ours, theirs in GGUF_NAMES.items():
            for kind in ("weight", "bias"):
                if f"model.layers.{i}.{ours}.{kind}" in sd:
                    w.add_tensor(f"blk.{i}.{theirs}.{kind}", sd[f"model.layers.{i}.{ours}.{kind}"])
    w.add_tensor("output_norm.weight", sd["model.norm.weight"])
    w.add_tensor("output.weight", sd["lm_head.weight"] if "lm_head.weight" in sd else sd["model.embed_tokens.weight"])
    if c.rope_parameters.get("rope_type") == "llama3":
        w.add_tensor("rope_freqs.weight", llama3_rope_factors(c))
    for name, tensor in (extra or {}).items():
        w.add_tensor(name, tensor)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def llama3_rope_factors(c) -> np.ndarray:
    """Each rotary frequency's divisor for Llama 3's rope scaling (llama.cpp's
    convert_hf_to_gguf.py, LlamaModel.generate_extra_tensors)."""
    r = c.rope_parameters
    dim = c.hidden_size // c.num_attention_heads
    freqs = 1.0 / (r["rope_theta"] ** (np.arange(0, dim, 2, dtype=np.float32) / dim))
    old, lo, hi = r["original_max_position_embeddings"], r["low_freq_factor"], r["high_freq_factor"]
    out = []
    for freq in freqs:
        wavelen = 2 * math.pi / freq
        if wavelen < old / hi:
            out.append(1.0)
        elif wavelen > old / lo:
            out.append(r["factor"])
        else:
            smooth = (old / wavelen - lo) / (hi - lo)
            out.append(1 / ((1 - smooth) / r["factor"] + smooth))
    return np.array(out, np.float32)


def k_quant_blocks(shape: tuple[int, int], qtype, std: float, seed: int) -> np.ndarray:
    """Random blocks of a K-quant `qtype` ([rows, row bytes]; gguf cannot quantize to them)
    whose values have a standard deviation of about `std` (their fp16 factors scaled)."""
    from vocabtrim import native

    rows, cols = shape
    blocks = native.random_weights(int(qtype), rows, cols, seed).reshape(-1, native.BLOCKS[int(qtype)][1])
    factor = std / native.dequantize(blocks, int(qtype), rows * cols).std()
    for at in (208,) if int(qtype) == native.Q6_K else (0, 2):
        scaled = blocks[:, at:at + 2].copy().view(np.float16).astype(np.float32) * factor
        blocks[:, at:at + 2] = scaled.astype(np.float16).view(np.uint8)
    return blocks.reshape(rows, -1)


def quantized_gguf(model, path, qtype, monkeypatch, arch: str = "qwen2"):
    """`model` written by conftest's write_gguf with every matrix quantized to `qtype` (a
    K-quant: random blocks of the weights' spread); the model's weights replaced by what
    the file holds, so the two compute the same function."""
    import gguf

    add, stored = gguf.GGUFWriter.add_tensor, {}

    def add_quantized(self, name, tensor, *args, **kwargs):
        if tensor.ndim == 2:
            return add(self, name, stored[tensor.tobytes()], raw_dtype=qtype)
        return add(self, name, tensor, *args, **kwargs)

    with torch.no_grad():
        for i, p in enumerate(model.parameters()):
            if p.ndim == 2:
                q = (gguf.quants.quantize(p.numpy(), qtype) if not qtype.name.endswith("_K")
                     else k_quant_blocks(tuple(p.shape), qtype, float(p.std()), seed=i))
                p.copy_(torch.from_numpy(gguf.quants.dequantize(q, qtype).reshape(p.shape)))
                stored[p.numpy().tobytes()] = q
    with monkeypatch.context() as m:  # undoes this patch alone (the caller's, VOCABTRIM_CACHE's, stay)
        m.setattr(gguf.GGUFWriter, "add_tensor", add_quantized)
        write_gguf(model, path, arch)
    return path


def pytest_terminal_summary(terminalreporter) -> None:
    """The suite's peak resident memory (mapped model files included), beside the machine's
    24 GB: this process's, and the largest of the child processes it waited for."""
    import resource

    own, child = (resource.getrusage(who).ru_maxrss / 2**20 for who in (resource.RUSAGE_SELF,
                                                                         resource.RUSAGE_CHILDREN))
    terminalreporter.write_line(f"peak resident memory: {own:.1f} GB in pytest, {child:.1f} GB in its largest child")
