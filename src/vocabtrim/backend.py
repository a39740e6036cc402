"""Which backend runs the target: torch (transformers' modules over 16-bit or packed
weights), ggml (the model's GGUF file at its stored precision, on llama.cpp's kernels) or
native (the GGUF file on vocabtrim's own batch-invariant kernels, docs/native.md).

`auto` takes whichever decodes this model file faster on this machine: one single-token
step of each after a short cached context (the step speculative decoding cannot skip),
timed once and cached per CPU, threads, model file and dtype. Each backend is timed in a
child process: one whose native library dies there is reported in one line and not chosen.
A backend that cannot run the file (the native engine refuses an architecture or tensor
type it does not know) is left out. A model without a GGUF file runs on torch.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

from . import ggml, models, native
from .errors import VocabtrimError
from .files import atomic_write, version
from .ggml import GgmlTarget
from .isolate import Crashed, run_isolated
from .kernels import cpu, resolve
from .paths import cache_file
from .profile import forward_ms
from .target import TorchTarget

BACKENDS = ("auto", "torch", "ggml", "native")
CONTEXT, REPEATS = 128, 8


def choose(spec: str, backend: str, dtype: str = "auto") -> str:
    """The backend for the target `spec` (see the module doc)."""
    if backend == "ggml" and not ggml.available():
        raise VocabtrimError(f"--backend ggml needs llama-cpp-python: {ggml.INSTALL_HINT}")
    if backend == "native":
        native.lib()  # one line where the kernels were not built
    if backend != "auto":
        return backend
    gguf = models.gguf_path(spec)
    if gguf is None:
        return "torch"
    dtype = resolve(dtype)
    path = cache_file("profiles", {"backend_choice": cpu(), "gguf": version(gguf), "dtype": dtype,
                                   **({"native": 1} if native.available() else {})}, ".json")
    choice = _read(path)
    if choice is None:
        names = ["torch"] + [n for n, here in (("ggml", ggml.available()), ("native", native.available())) if here]
        print(f"timing {spec} on {', '.join(names)} (once on this machine)", file=sys.stderr)
        ms, failed = {}, {}
        for name in names:
            try:
                ms[name] = run_isolated(_step_ms, name, spec, str(gguf), dtype)
            except Crashed as e:
                failed[name] = str(e)
                print(f"the {name} backend crashed while timing {spec} ({e}): not chosen", file=sys.stderr)
            except VocabtrimError as e:  # it cannot run this file: not a candidate
                failed[name] = str(e)
        if not ms:
            raise VocabtrimError(f"every backend crashed while timing {spec}: {failed}")
        choice = {"backend": min(ms, key=ms.get), "ms": ms, "crashed": failed}
        atomic_write(path, lambda tmp: Path(tmp).write_text(json.dumps(choice)))
    return choice["backend"]


def _read(path: Path) -> dict | None:
    try:
        choice = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return choice if isinstance(choice, dict) and choice.get("backend") in BACKENDS[1:] else None


@torch.inference_mode()
def _step_ms(name: str, spec: str, gguf: str, dtype: str) -> float:
    """Median ms of one single-token step of backend `name` after CONTEXT cached tokens."""
    if name == "torch":
        target = TorchTarget(models.load(spec, dtype).model)
    elif name == "ggml":
        target = GgmlTarget(gguf)
    else:
        from .native_target import NativeTarget

        target = NativeTarget(gguf)
    ids = [(500 + i) % target.vocab_size for i in range(CONTEXT)]
    return forward_ms(target.logits, target.vocab_size, ids, 1, REPEATS)
