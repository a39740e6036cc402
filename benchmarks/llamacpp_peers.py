"""llama.cpp's own speculative modes as peers, on the same GGUF files and prompts as `vocabtrim bench`.

Builds llama-server and llama-bench once (into $VOCABTRIM_CACHE/llama.cpp/VERSION-noamx/bin, without the AMX matmul) from
the llama.cpp source vendored in the sdist of the installed llama-cpp-python, fetched with
pip. Then, per mode, runs llama-server on 127.0.0.1 with the target GGUF: `alone` (no
speculation, the baseline), `ngram-simple` and `ngram-mod` (`--spec-type`, model-free
drafts) and `draft` (`--spec-type draft-simple -md DRAFT`), each at llama.cpp's default
draft settings, greedy. Every mode gets the token ids bench's runner feeds its target (the
same questions, chat template and turns) through `/completion`, interleaved question by
question with one server up at a time (restarted between modes, untimed, then warmed up),
and the runs go through bench's runner and report: results.jsonl, summary.json/.md and
the plots in --out, and the bench tables printed, speed-up and identity against
`llamacpp-alone` (the header's "identical to ar" means identical to it).

    python benchmarks/llamacpp_peers.py --limit 4 --max-new-tokens 128 --out results/llamacpp_peers

What the server tells and how it maps onto `GenerationStats` (see `stats_from`): new_tokens
= the returned token ids; seconds = the client's wall-clock of the request; prefill_s =
timings.prompt_ms; target_forwards = the server's llama_decode calls of the target during
the request (`n_decode_total` of /metrics, before and after: the prompt's one, then one a
step or verification); drafted and accepted tokens = timings.draft_n and
draft_n_accepted, over the verification rounds of /metrics' `spec_decode_num_drafts_total`.
The server reports totals only, so draft_lengths and accepted_per_round hold those totals
spread evenly over the rounds: their sums and count, all the report reads, are exact, the
single entries are not measured. bonus_tokens = new_tokens - accepted. Left at their
defaults: drafter_forwards, cost_ratio and draft_cost (not reported: the c column reads
`-`, MBSU equals tau), draft_s and verify_s (not split: the time table's `other` is the
server's whole decode), suffix_rounds and policy_state.
"""

from __future__ import annotations

import argparse
import fcntl
import importlib.metadata
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tarfile
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from vocabtrim import catalog, paths, prompts
from vocabtrim.bench.report import check_out_dir, markdown, summarize, write_reports
from vocabtrim.bench.run import Method, run_matrix
from vocabtrim.cli.measure import DEFAULT_BENCH_PROMPTS
from vocabtrim.data import load_questions, select
from vocabtrim.errors import VocabtrimError
from vocabtrim.metrics import GenerationStats, timed

BINARIES = ("llama-server", "llama-bench")
CMAKE_OPTIONS = ("-DCMAKE_BUILD_TYPE=Release", "-DLLAMA_CURL=OFF", "-DLLAMA_BUILD_TESTS=OFF",
                 "-DLLAMA_BUILD_EXAMPLES=OFF", "-DLLAMA_BUILD_TOOLS=ON", "-DLLAMA_BUILD_SERVER=ON",
                 "-DLLAMA_BUILD_UI=OFF", "-DLLAMA_USE_PREBUILT_UI=OFF",  # no npm, no download: no web UI
                 "-DLLAMA_OPENSSL=OFF",  # loopback only
                 "-DBUILD_SHARED_LIBS=OFF",  # self-contained binaries survive the rename into place
                 # no AMX matmul (it segfaults on Xeon hosts: vocabtrim.ggml.avoids_amx), the rest of
                 # -march=native kept: GCC lets an explicit -mno- win over -march in either order
                 "-DCMAKE_C_FLAGS=-mno-amx-int8", "-DCMAKE_CXX_FLAGS=-mno-amx-int8")
BUILD = "noamx"  # the build's name beside the version: a cached build made with AMX is not reused
MODES = {  # mode -> llama-server's flags for it (draft: and -md DRAFT)
    "alone": (),
    "ngram-simple": ("--spec-type", "ngram-simple"),
    "ngram-mod": ("--spec-type", "ngram-mod"),
    "draft": ("--spec-type", "draft-simple"),
}
BACKEND = "llama.cpp"  # bench's name for llama.cpp running its own decoding loop
PREFIX = "llamacpp-"
BASELINE = PREFIX + "alone"
CONTEXT = 8192  # tokens of the one slot: bench's longest turns plus answers fit with room
READY_TIMEOUT_S = 300.0
REQUEST_TIMEOUT_S = 3600.0
WARM_UP_PROMPT = "Say hello."  # bench's warm-up: the first request allocates what later ones reuse


# --- the build -------------------------------------------------------------------------------

def llama_version() -> str:
    """The installed llama-cpp-python's version: its sdist vendors the llama.cpp built here."""
    try:
        return importlib.metadata.version("llama-cpp-python")
    except importlib.metadata.PackageNotFoundError:
        raise VocabtrimError("llama-cpp-python is not installed (pip install -e '.[ggml]'); its version "
                             "names the llama.cpp source to build") from None


def bin_dir(version: str) -> Path:
    """Where the binaries of `version` live once built: complete, or not there at all."""
    return paths.cache_root() / "llama.cpp" / f"{version}-{BUILD}" / "bin"


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    """An exclusive lock on `path`, so two runs never build at once (the later one waits)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            print(f"waiting for another build of llama.cpp ({path})", file=sys.stderr)
            fcntl.flock(f, fcntl.LOCK_EX)
        yield


def ensure_binaries(version: str) -> Path:
    """The bin directory of llama-server and llama-bench, built on first use. The build runs
    in a temporary directory beside the final one and is renamed into place at the end."""
    final = bin_dir(version)
    if all((final / b).is_file() for b in BINARIES):
        return final
    root = final.parent.parent
    with _locked(root / f".{version}.lock"):
        if all((final / b).is_file() for b in BINARIES):  # another run built it meanwhile
            return final
        for stale in root.glob(f".{version}.build-*"):  # left by a killed build
            shutil.rmtree(stale, ignore_errors=True)
        print(f"building llama-server from llama-cpp-python {version}'s vendored source, ~10 min once",
              file=sys.stderr)
        work = Path(tempfile.mkdtemp(prefix=f".{version}.build-", dir=root))
        try:
            _build(version, work)
            shutil.rmtree(final.parent, ignore_errors=True)  # an entry without both binaries
            (work / version).rename(final.parent)
        finally:
            shutil.rmtree(work, ignore_errors=True)
    return final


def _build(version: str, work: Path) -> None:
    """Fetch the sdist with pip, configure and build the two targets into work/VERSION/bin."""
    _step(["pip download", sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
           f"llama-cpp-python=={version}", "-d", str(work / "sdist")])
    sdists = list((work / "sdist").glob("llama_cpp_python-*.tar.gz"))
    if len(sdists) != 1:
        raise VocabtrimError(f"pip download left {len(sdists)} llama-cpp-python sdists in {work / 'sdist'}")
    with tarfile.open(sdists[0]) as tar:
        tar.extractall(work / "src", filter="data")
    src = next((work / "src").glob("*/vendor/llama.cpp"), None)
    if src is None or not (src / "tools" / "server").is_dir():
        raise VocabtrimError(f"{sdists[0].name} vendors no llama.cpp with tools/server")
    build = work / "build"
    _step(["cmake configure", "cmake", "-S", str(src), "-B", str(build), *CMAKE_OPTIONS])
    _step(["cmake build", "cmake", "--build", str(build), "--target", *BINARIES, "-j", str(cores())])
    out = work / version / "bin"
    out.mkdir(parents=True)
    for b in BINARIES:
        shutil.copy2(build / "bin" / b, out / b)


def _step(named: list[str]) -> None:
    """Run one build step with its output on stderr; a failure is one line naming the step."""
    what, *cmd = named
    try:
        rc = subprocess.run(cmd, stdout=sys.stderr, check=False).returncode
    except FileNotFoundError:
        raise VocabtrimError(f"{what}: {cmd[0]} not found (building llama.cpp needs cmake and a C++ compiler)") from None
    if rc != 0:
        raise VocabtrimError(f"{what} failed (exit {rc}); its output is above")


def cores() -> int:
    """The CPUs this process may run on: llama.cpp's threads and the build's jobs."""
    return len(os.sched_getaffinity(0))


# --- models and modes ----------------------------------------------------------------------------

def parse_modes(text: str) -> list[str]:
    """The comma list of --modes, checked; the baseline mode first, as bench runs `ar` first."""
    modes = [m.strip() for m in text.split(",") if m.strip()]
    unknown = [m for m in modes if m not in MODES]
    if unknown or not modes:
        raise VocabtrimError(f"unknown mode(s) {', '.join(unknown) or repr(text)}; choose from {', '.join(MODES)}")
    return sorted(dict.fromkeys(modes), key=lambda m: m != "alone")


def gguf_file(spec: str) -> Path:
    """The GGUF file of a built-in model name or a .gguf path."""
    path = Path(spec).expanduser()
    if path.suffix == ".gguf":
        if not path.is_file():
            raise VocabtrimError(f"GGUF file not found: {spec}")
        return path.resolve()
    if spec not in catalog.BUILTINS:
        raise VocabtrimError(f"unknown model {spec!r}: a built-in name ({', '.join(catalog.BUILTINS)}) "
                             "or a .gguf file")
    return catalog.gguf_path(spec)


def tokenizer_for(spec: str):
    """The target's tokenizer with its chat template, as bench loads it (no model weights)."""
    from transformers import AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    if spec in catalog.BUILTINS:
        return AutoTokenizer.from_pretrained(catalog.fetch(spec), local_files_only=True)
    gguf = gguf_file(spec)
    tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name, local_files_only=True)
    if tok.chat_template is None:
        tok.chat_template = catalog.gguf_chat_template(gguf)
    return tok


def server_command(binary: Path, mode: str, target: Path, draft: Path | None, threads: int) -> list[str]:
    """llama-server for one mode (the port is added per start): one slot with the whole
    context, no prompt cache between requests, metrics on (the counts of target forwards and
    verification rounds)."""
    cmd = [str(binary), "-m", str(target), "--host", "127.0.0.1", "-t", str(threads), "-c", str(CONTEXT), "-np", "1", "--cache-ram", "0", "--metrics",
           "--no-webui", *MODES[mode]]
    if mode == "draft":
        if draft is None:
            raise ValueError("the draft mode needs a draft GGUF")
        cmd += ["-md", str(draft)]
    return cmd


# --- the server ----------------------------------------------------------------------------------

def free_port() -> int:
    """A port nothing listens on now (the kernel's pick) on the loopback interface."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """One llama-server process; `stop` ends it (terminate, then kill) and is idempotent."""

    def __init__(self, mode: str, cmd: list[str], port: int, log: Path):
        cmd = [*cmd, "--port", str(port)]
        self.mode, self.log, self.url = mode, log, f"http://127.0.0.1:{port}"
        with open(log, "a") as f:
            f.write(f"\n=== {' '.join(cmd)}\n")
            f.flush()
            self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=f, stderr=subprocess.STDOUT)

    def wait_ready(self, timeout: float = READY_TIMEOUT_S) -> None:
        """Until /health answers 200 (the model is loaded); a server that exits is an error."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise VocabtrimError(f"llama-server ({self.mode}) exited with {self.proc.returncode} before "
                                     f"it was ready: {self._last_line()} (log: {self.log})")
            try:
                with urllib.request.urlopen(self.url + "/health", timeout=5) as r:
                    if r.status == 200:
                        return
            except (urllib.error.URLError, OSError):  # not listening yet, or 503 while loading
                pass
            time.sleep(0.2)
        raise VocabtrimError(f"llama-server ({self.mode}) not ready after {timeout:g} s (log: {self.log})")

    def _last_line(self) -> str:
        lines = self.log.read_text(errors="replace").strip().splitlines()
        return lines[-1] if lines else "no output"

    def stop(self) -> None:
        """Terminate, wait, then kill: no server outlives the run, even on an error or Ctrl-C."""
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def post(self, path: str, payload: dict) -> dict:
        """POST JSON, read JSON; an HTTP error is one line with the server's message."""
        req = urllib.request.Request(self.url + path, data=json.dumps(payload).encode(),
                                     headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=REQUEST_TIMEOUT_S) as r:
                return json.load(r)
        except urllib.error.HTTPError as e:
            body = e.read().decode(errors="replace")
            try:
                body = json.loads(body)["error"]["message"]
            except (ValueError, KeyError, TypeError):
                pass
            raise VocabtrimError(f"llama-server ({self.mode}) {path}: HTTP {e.code}: {body}") from None
        except (urllib.error.URLError, OSError) as e:
            raise VocabtrimError(f"llama-server ({self.mode}) {path}: {e} (log: {self.log})") from None

    def counters(self) -> dict[str, float]:
        """/metrics' counters by name without the `llamacpp:` prefix."""
        with urllib.request.urlopen(self.url + "/metrics", timeout=30) as r:
            text = r.read().decode()
        out = {}
        for line in text.splitlines():
            if line and not line.startswith("#"):
                name, value = line.rsplit(" ", 1)
                out[name.split(":", 1)[-1]] = float(value)
        return out


class Servers:
    """At most one llama-server at a time (never four models and thread pools on a machine
    that benchmarks), started for whichever mode asks; start-ups are timed apart."""

    def __init__(self, commands: dict[str, list[str]], log: Path, warm_up_ids: list[int]):
        self.commands, self.log, self.warm_up_ids = commands, log, warm_up_ids
        self.current: Server | None = None
        self.start_s = 0.0

    def use(self, mode: str) -> Server:
        """The server of `mode`, started and warmed up when another mode's was up."""
        if self.current is not None and self.current.mode == mode:
            return self.current
        t0 = time.perf_counter()
        self.close()
        self.current = Server(mode, self.commands[mode], free_port(), self.log)
        self.current.wait_ready()
        complete(self.current, self.warm_up_ids, 8)
        self.start_s += time.perf_counter() - t0
        return self.current

    def close(self) -> None:
        if self.current is not None:
            self.current.stop()
            self.current = None


# --- one generation ------------------------------------------------------------------------------

def completion_request(prompt_ids: list[int], max_new_tokens: int) -> dict:
    """The /completion body: the ids as they are (no BOS added to a token array), greedy
    (temperature 0 alone: its sampler keeps only the best token), no prompt reuse, ids back."""
    return {"prompt": list(prompt_ids), "n_predict": max_new_tokens, "cache_prompt": False,
            "temperature": 0.0, "samplers": ["temperature"], "return_tokens": True, "stream": False}


def spread(total: int, n: int) -> list[int]:
    """`total` split into `n` near-equal counts (larger first) summing to it exactly."""
    return [total // n + (i < total % n) for i in range(n)] if n else []


def stats_from(response: dict, seconds: float, delta: dict[str, float]) -> tuple[list[int], GenerationStats]:
    """(new token ids, stats) of one /completion response, `seconds` its client wall-clock
    and `delta` the /metrics counters it moved (see the module docstring)."""
    tokens, timings = response.get("tokens"), response.get("timings", {})
    if not isinstance(tokens, list) or len(tokens) != timings.get("predicted_n"):
        raise VocabtrimError(f"llama-server returned {len(tokens or [])} token ids for "
                             f"{timings.get('predicted_n')} predicted tokens (return_tokens unsupported?)")
    if response.get("truncated"):
        raise VocabtrimError(f"llama-server's context ({CONTEXT} tokens) overflowed: the answer is cut short")
    drafted, accepted = int(timings.get("draft_n", 0)), int(timings.get("draft_n_accepted", 0))
    rounds = int(delta.get("spec_decode_num_drafts_total", 0))
    if drafted and not rounds:
        raise VocabtrimError("llama-server drafted tokens but counted no verification round")
    stats = GenerationStats(new_tokens=len(tokens), target_forwards=int(delta.get("n_decode_total", 0)),
                            draft_lengths=spread(drafted, rounds), accepted_per_round=spread(accepted, rounds),
                            bonus_tokens=len(tokens) - accepted, prefill_s=timings.get("prompt_ms", 0.0) / 1000,
                            seconds=seconds)
    return [int(t) for t in tokens], stats


def complete(server: Server, prompt_ids: list[int], max_new_tokens: int) -> tuple[list[int], GenerationStats]:
    """One timed greedy generation on `server`, counters read before and after."""
    before = server.counters()
    t0 = time.perf_counter()
    response = server.post("/completion", completion_request(prompt_ids, max_new_tokens))
    seconds = time.perf_counter() - t0
    after = server.counters()
    return stats_from(response, seconds, {k: after[k] - before.get(k, 0.0) for k in after})


def same_tokens(prompt: list[int], base: list[int], other: list[int]) -> dict | None:
    """`summarize`'s check by token equality: where the outputs first differ (never a tie:
    there are no logits here to tell one), None when identical."""
    n = next((i for i, (a, b) in enumerate(zip(base, other)) if a != b), min(len(base), len(other)))
    if n == len(base) == len(other):
        return None
    return {"position": n, "token_a": base[n] if n < len(base) else None,
            "token_b": other[n] if n < len(other) else None, "tie": False}


# --- the run -------------------------------------------------------------------------------------

def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """bench's options, checked here: a bad value is one line before anything is built or started."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default="humaneval",
                    help="humaneval, a Spec-Bench question file, or a JSONL with 'prompt' (+ 'category')")
    ap.add_argument("--per-category", type=int, help="first N questions of each category")
    ap.add_argument("--limit", type=int, help=f"first N questions (humaneval default: {DEFAULT_BENCH_PROMPTS})")
    ap.add_argument("--max-new-tokens", type=int, default=128)
    ap.add_argument("--modes", default=",".join(MODES), help=f"comma list of {', '.join(MODES)}")
    ap.add_argument("--target", default=catalog.DEFAULT_TARGET, help="a built-in name or a .gguf file")
    ap.add_argument("--draft", default=catalog.DEFAULT_DRAFT, help="the draft mode's model: a built-in name or a .gguf file")
    ap.add_argument("--threads", type=int, default=cores(), help="llama.cpp's threads (default: this machine's cores)")
    ap.add_argument("--repeats", type=int, default=1, help="runs of each prompt per mode, order alternating; the fastest is kept")
    ap.add_argument("--out", type=Path, default=Path("results/llamacpp_peers"))
    ap.add_argument("--resume", action="store_true", help="continue an interrupted run in --out")
    args = ap.parse_args(argv)
    for name in ("per_category", "limit", "max_new_tokens", "threads", "repeats"):
        value = getattr(args, name)
        if value is not None and value < 1:
            raise VocabtrimError(f"--{name.replace('_', '-')} must be >= 1, got {value}")
    args.modes = parse_modes(args.modes)
    if args.data == "humaneval" and args.per_category is None and args.limit is None:
        args.limit = DEFAULT_BENCH_PROMPTS
    return args


def run(args: argparse.Namespace) -> None:
    """Check everything that can be refused, build, then the matrix and the report."""
    spent: dict[str, float] = {}
    questions = select(load_questions(args.data), args.per_category, args.limit)
    check_out_dir(args.out, args.resume)
    target = gguf_file(args.target)
    draft = gguf_file(args.draft) if "draft" in args.modes else None
    version = llama_version()
    with timed(spent, "build"):
        binary = ensure_binaries(version) / "llama-server"
    with timed(spent, "loading"):
        tok = tokenizer_for(args.target)
    commands = {m: server_command(binary, m, target, draft, args.threads) for m in args.modes}
    args.out.mkdir(parents=True, exist_ok=True)
    servers = Servers(commands, args.out / "llama-server.log", prompts.encode_prompt(tok, WARM_UP_PROMPT))
    methods = [Method(PREFIX + m, lambda ids, n, m=m: complete(servers.use(m), ids, n), BACKEND)
               for m in args.modes]
    try:
        with timed(spent, "generations"):
            records = run_matrix(questions, methods, tok, args.max_new_tokens, args.out / "results.jsonl",
                                 args.resume, args.repeats)
    finally:
        servers.close()
    spent["generations"] -= servers.start_s
    spent["server starts"] = servers.start_s
    summary = summarize(records, BASELINE, True, same_tokens)
    summary["time_s"] = spent
    summary["settings"] = {"data": args.data, "questions": len(questions), "max_new_tokens": args.max_new_tokens,
                           "repeats": args.repeats, "target": str(target), "draft": str(draft) if draft else None,
                           "llama_cpp_python": version, "threads": args.threads, "context": CONTEXT,
                           "server": {PREFIX + m: c for m, c in commands.items()},
                           "request": completion_request([], args.max_new_tokens)}
    write_reports(summary, args.out)
    print(markdown(summary))
    print(f"results, summary.md, plots and llama-server.log in {args.out}")


def main() -> None:
    """What vocabtrim refuses is one `error: ...` line and exit status 1, as in the other scripts."""
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # through the finally that stops the server
    try:
        run(parse_args())
    except VocabtrimError as e:
        sys.exit(f"error: {e}")


if __name__ == "__main__":
    main()
