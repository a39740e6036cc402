"""Loading a model by its spec (a built-in name, a model directory, a .gguf file or a
cached hub id) with its tokenizer, on one backend, and the cache of quantized drafters."""

from __future__ import annotations

import json
import pickle
import sys
import warnings
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from . import backend, kernels
from .catalog import BUILTINS, fetch, first_line, gguf_chat_template, gguf_path
from .errors import VocabtrimError
from .files import atomic_write, version
from .gguf_header import ROPE_FACTORS, read_gguf, rope_factors
from .paths import cache_file
from .target import Target

QUANT_FORMAT = 2  # the layout of a saved quantized model: a new one makes older files stale (2: bf16 scales)


@dataclass
class Loaded:
    """A causal LM with its tokenizer and the name it was asked for by, on one backend.

    `weights` is the torch model, or a function that loads it: `load` leaves them unloaded,
    so that a model's tokenizer and config can be checked first (`loading.load_parts` then
    loads a torch target's and drafters' at once; a GGUF backend's torch copy loads only if
    something asks for `model`, as transformers' peers do)."""

    name: str
    weights: torch.nn.Module | Callable[[], torch.nn.Module]
    tokenizer: object
    dtype: str = "bfloat16"  # resolved: a torch dtype name or kernels.PACKED (of the torch weights)
    source: str = ""  # the weights it was loaded from (see `_source`); "" for one built in memory
    backend: str = "torch"  # the name of what its target runs on (backend.py); a GGUF one runs `gguf`
    gguf: Path | None = None
    config: object = None  # transformers' config (default: the model's)
    generation: object = None  # transformers' generation config, where the model has one
    # what `drafting` made, kept (a native model's header read once); `replace` starts afresh
    _drafting: object = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if isinstance(self.weights, torch.nn.Module):
            self.config = self.config or self.weights.config
            self.generation = self.generation or getattr(self.weights, "generation_config", None)

    @property
    def model(self) -> torch.nn.Module:
        if not isinstance(self.weights, torch.nn.Module):
            self.weights = self.weights()
        return self.weights

    @property
    def trained_context(self) -> int:
        """The longest sequence the model was made for (its config's)."""
        return int(getattr(self.config, "max_position_embeddings", 1 << 30))

    @property
    def context(self) -> int:
        """The longest sequence its target takes: the trained length, or less where the
        backend caps its cache."""
        cap = backend.get(self.backend).max_context
        return self.trained_context if cap is None else min(self.trained_context, cap)

    @property
    def drafting(self):
        """What a drafter of it drafts with (`drafting.DraftModel`): on the native backend its
        GGUF file on the native engine, else its torch weights."""
        if self._drafting is None:
            self._drafting = backend.get(self.backend).draft_model(self)
        return self._drafting

    def as_target(self) -> Target:
        """This model as the engine's target (a fresh cache)."""
        return backend.get(self.backend).target(self)


def resolve(spec: str) -> tuple[Path | str, str | None]:
    """Map a model spec to (directory or hub id, gguf file name or None)."""
    if spec in BUILTINS:
        return fetch(spec), None
    path = Path(spec).expanduser()
    if path.suffix == ".gguf":
        if not path.is_file():
            raise VocabtrimError(f"GGUF file not found: {spec}")
        return path.parent, path.name
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise VocabtrimError(f"{spec} is a directory but holds no config.json")
        return path, None
    if path.exists() or spec.count("/") != 1:
        raise VocabtrimError(
            f"unknown model {spec!r}: not a built-in name ({', '.join(BUILTINS)}), "
            "a model directory, a .gguf file or a hub id")
    return spec, None  # a hub id: only the local hub cache is consulted


@dataclass(frozen=True)
class Merge:
    """A change merged into a model's torch weights as they load (an adapter of `vocabtrim
    adapt`): `file` keys the model's source, `apply(model, tokenizer)` changes the weights."""

    file: Path
    apply: Callable[[torch.nn.Module, object], torch.nn.Module]


def load(spec: str, dtype: str = "auto", on: str = "torch", merge: Merge | None = None) -> Loaded:
    """Load model and tokenizer for `spec` (see `resolve`), in eval mode, never remote code.

    `dtype` is a torch dtype name, `packed-fp16` (fbgemm fp16 weights, fp32 math) or
    `auto`: whichever of bfloat16 and packed-fp16 is fast on this CPU (see kernels.py).
    `on` names the backend its target runs on (backend.py); on one that runs the GGUF
    file, the torch weights load only when asked for. `merge` changes the torch weights
    (a drafter's adapter)."""
    from transformers import AutoConfig, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # a load from the cache takes seconds: no bar needed
    hf_logging.set_verbosity_error()
    dtype, runs_gguf = kernels.resolve(dtype), backend.get(on).runs_gguf
    where, gguf = resolve(spec)
    kwargs, header = {"gguf_file": gguf} if gguf else {}, None
    with _reading(spec, where):
        tok = AutoTokenizer.from_pretrained(where, local_files_only=True, **kwargs)
        if gguf and tok.chat_template is None:
            tok.chat_template = gguf_chat_template(Path(where) / gguf)
        config = AutoConfig.from_pretrained(where, local_files_only=True, **kwargs)
        if gguf:
            header = read_gguf(Path(where) / gguf)
            config = _gguf_config(config, header[0])
        generation = _generation(where)
    weights = lambda: _weights(spec, where, gguf, dtype, config, header, merge, tok)  # noqa: E731
    if not runs_gguf:
        source = _source(where, gguf) if merge is None else json.dumps([_source(where, gguf), version(merge.file)])
        return Loaded(spec, weights, tok, dtype, source, on, None, config, generation)
    if merge is not None:
        raise VocabtrimError(f"an adapter adapts a drafter's torch weights; the {on} backend runs a GGUF file")
    file = gguf_path(spec)
    if file is None:
        raise VocabtrimError(f"the {on} backend runs GGUF files; {spec} is not one (give a .gguf file "
                             "or use --backend torch)")
    return Loaded(spec, weights, tok, dtype, _source(file.parent, file.name), on, file, config, generation)


def on_gguf(loaded: Loaded, on: str, file: Path | None = None) -> Loaded:
    """`loaded` (its tokenizer and config as they are) on backend `on`, which runs its GGUF
    file (or `file`: a copy of it, gguf_copy's: an adapter merged in, or requantized)."""
    file = file or gguf_path(loaded.name)
    if file is None:
        raise VocabtrimError(f"the {on} backend runs GGUF files; {loaded.name} is not one")
    return replace(loaded, backend=on, gguf=file, source=_source(file.parent, file.name))


def _generation(where: Path | str):
    """transformers' generation config of the model at `where`, where it has one."""
    from transformers import GenerationConfig

    try:
        return GenerationConfig.from_pretrained(where, local_files_only=True)
    except OSError:  # none: the tokenizer's and config's end tokens stand
        return None


@contextmanager
def _reading(spec: str, where: Path | str):
    """Turns a model that fails to load into one line saying which and what to do, with
    nothing printed before it: the warnings of a load that fails (torch's unpickler warns
    about the file it then refuses) are dropped with it; a load that succeeds keeps them."""
    with warnings.catch_warnings(record=True) as caught:
        try:
            yield
        except VocabtrimError:
            raise
        except pickle.UnpicklingError:
            raise VocabtrimError(f"cannot load model {spec!r}: its weights file is not a checkpoint torch can "
                                 f"read safely (torch.load with weights_only refused it)") from None
        except OSError as e:
            if spec in BUILTINS:
                raise VocabtrimError(
                    f"cache entry for {spec} at {where} is corrupt ({first_line(e)}); "
                    f"delete it and run `vocabtrim models fetch {spec}`") from None
            raise VocabtrimError(f"cannot load model {spec!r}: {first_line(e)}") from None
        except Exception as e:  # noqa: BLE001 - a bad model dir fails in many ways; say which in one line
            hint = f"; delete {where} and fetch again" if spec in BUILTINS else ""
            raise VocabtrimError(f"cannot load model {spec!r}: {first_line(e)}{hint}") from None
    for w in caught:
        warnings.showwarning(w.message, w.category, w.filename, w.lineno)


def _weights(spec: str, where: Path | str, gguf: str | None, dtype: str, config, header: tuple | None,
             merge: Merge | None = None, tokenizer=None) -> torch.nn.Module:
    """The torch model of `spec`, in `dtype`, eval mode, with `merge` applied; `config` and
    `header` (a GGUF file's, read_gguf's) as `load` read them."""
    from transformers import AutoModelForCausalLM

    kwargs = {"gguf_file": gguf, "config": config} if gguf else {}
    with _reading(spec, where):
        model = AutoModelForCausalLM.from_pretrained(
            where, dtype=kernels.TORCH_DTYPES.get(dtype, torch.bfloat16), local_files_only=True, **kwargs)
    if gguf:  # its weights are dequantized now, but transformers still marks it quantized
        model.is_quantized, model.hf_quantizer = False, None
        _rope_as_the_file_says(model, Path(where) / gguf, *header)
    model.eval()
    if merge is not None:
        model = merge.apply(model, tokenizer)
    return kernels.in_dtype(model, dtype)


def _gguf_config(config, meta: dict):
    """`config` as transformers read it from a GGUF header `meta`, with the heads' width it
    leaves out (`attention.key_length`: Qwen3's small models have heads wider than the
    hidden size over their count)."""
    width = meta.get(f"{meta.get('general.architecture')}.attention.key_length")
    if width is not None and hasattr(config, "head_dim"):
        config.head_dim = width
    return config


def _rope_as_the_file_says(model: torch.nn.Module, file: Path, meta: dict, tensors: dict) -> None:
    """transformers' GGUF loader leaves out a file's rope scaling, which llama.cpp applies:
    rope_freqs.weight (Llama 3's, each rotary frequency's divisor) is divided in here, so
    that the torch model is the file's; `rope.scaling.type` (YaRN, linear) is refused."""
    kind = meta.get(f"{meta.get('general.architecture')}.rope.scaling.type", "none")
    if kind != "none":
        raise VocabtrimError(f"{file.name}: transformers' GGUF loader leaves out its rope scaling ({kind}), so "
                             "it runs on the ggml backend only (and without transformers' peers, hf and pld)")
    if ROPE_FACTORS not in tensors:
        return
    rotary = [m for m in model.modules() if isinstance(getattr(m, "inv_freq", None), torch.Tensor)]
    if not rotary or any(m.inv_freq.shape != rotary[0].inv_freq.shape for m in rotary):
        raise VocabtrimError(f"{file.name}: {ROPE_FACTORS} does not fit this model's rotary embedding "
                             "(run it on the ggml backend)")
    f = rope_factors(file, tensors, len(rotary[0].inv_freq))
    for m in rotary:
        m.inv_freq = m.inv_freq / torch.from_numpy(f)
        m.original_inv_freq = m.inv_freq


def _source(where: Path | str, gguf: str | None) -> str:
    """The weight files `load` reads, each with its size and modification time, so that a
    changed file makes another model. A hub id stands for itself (the hub caches its files)."""
    if isinstance(where, str):
        return where
    files = [where / gguf] if gguf else sorted([*where.glob("*.safetensors"), *where.glob("*.bin")])
    return json.dumps([version(f) for f in files])


def quantize(loaded: Loaded, scheme: str) -> Loaded:
    """`loaded` with its linear layers in `scheme` (kernels.quantized), named `name@scheme`;
    read from the cache when this model was quantized before (see `_quantized_cached`)."""
    model = _quantized_cached(loaded, scheme) if loaded.source else kernels.quantized(loaded.model, scheme)
    return replace(loaded, name=f"{loaded.name}@{scheme}", weights=model, backend=backend.TORCH)


def _quantized_cached(loaded: Loaded, scheme: str) -> torch.nn.Module:
    """Quantizing a 0.5B drafter takes seconds, so it happens once per weight files, dtype
    and scheme: the parts are saved atomically under cache_root()/quantized and read back
    later. A file that is missing, corrupt or made for something else is rebuilt; a cache
    that cannot be written costs only the time (a warning says so)."""
    parts = {"source": loaded.source, "dtype": loaded.dtype, "scheme": scheme,
             "group": kernels.INT4_GROUP, "format": QUANT_FORMAT}
    key = json.dumps(parts, sort_keys=True)
    path = cache_file("quantized", parts, ".safetensors", f"{Path(loaded.name).name}-{scheme}-")
    model = _read_quantized(path, key, loaded.model, scheme)
    if model is None:
        model = kernels.quantized(loaded.model, scheme)
        parts = kernels.quantized_parts(model)
        try:
            atomic_write(path, lambda tmp: save_file(parts, tmp, metadata={"key": key}))
        except (VocabtrimError, SafetensorError) as e:  # the write's one line, or safetensors' own
            print(f"warning: cannot cache the quantized drafter ({e}); it is quantized again next time",
                  file=sys.stderr)
    return model


def _read_quantized(path: Path, key: str, model: torch.nn.Module, scheme: str) -> torch.nn.Module | None:
    """The quantized copy of `model` rebuilt from `path`; None when the file is missing,
    unreadable, or saved under another key or for other shapes."""
    try:
        with safe_open(path, "pt") as f:
            if (f.metadata() or {}).get("key") != key:
                return None
            saved = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 - safe_open is not iterable
        return kernels.quantized(model, scheme, saved)
    except (OSError, SafetensorError, KeyError, VocabtrimError):
        return None
