"""Serving side by side, on a mixed workload (prompt lengths and `max_tokens` drawn from
8-128 tokens, sampled, so nothing is cached and answers differ in length): our server with
continuous batching, with request-level batching and with none, and `mlflow models serve` of
the same registered model, at concurrency 1/16/32, rounds interleaved. Per row: requests and
generated tokens per second, time to first token P50/P99 (streamed answers; a server that
answers at the end gives its first token then), latency P99, and the spread over rounds.
Then the response cache on a Zipf-distributed prompt workload: hit ratio and the generated
tokens (model compute) it saved. Writes bench/results/serving.json and docs/BENCHMARKS.md.

With `--size gpt2-small` (and `llama-small`): the same comparison at real size (124 M and
127 M parameters, random weights, so every answer runs to its `max_tokens`), without the
cache part; results in bench/results/serving-real.json.

    .venv/bin/python bench/server_load.py [--steps 300] [--seconds 10] [--rounds 2]
    .venv/bin/python bench/server_load.py --size gpt2-small [--seconds 40] [--rounds 1]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import random
import secrets
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import requests

from serving.local import free_port, local_server, wait_ready
from tasks.config import LifecycleConfig
from tasks.data.source import load_demo
from tasks.registry.register import CHAMPION, register
from tasks.settings import PROJECT_ROOT
from tasks.stage import StageContext
from tasks.tracking import stage_run

sys.path.insert(0, str(PROJECT_ROOT / "bench"))
from compression import REAL_CONF, demo_settings, train_demo  # noqa: E402
from report import update_section  # noqa: E402

CONCURRENCY = (1, 16, 32)
LENGTHS = (8, 128)  # prompt tokens and max_tokens are drawn from this range
NEW_TOKENS = 16  # the cache workload's answers
MODEL_NAME = "aigc-gpt2"
WARM_UP_S = 2.0
ZIPF_PROMPTS, ZIPF_S, ZIPF_REQUESTS = 500, 1.1, 2000
OURS = {"continuous": {"AIGC_BATCHING": "continuous", "AIGC_MAX_BATCH": "32"},
        "request-level": {"AIGC_BATCHING": "request", "AIGC_MAX_BATCH": "32"},
        "none": {"AIGC_BATCHING": "none"}}
MLFLOW = "mlflow models serve"


@dataclass(frozen=True)
class Answer:
    first_token_s: float
    tokens: int | None  # None: the server does not say and its text cannot tell


Send = Callable[[httpx.Client, str, int, int], Answer]


class Workload:
    """Prompts of a drawn number of tokens (cut from the corpus) and a drawn max_tokens."""

    def __init__(self, tokenizer, corpus: list[str]) -> None:
        self.tokenizer = tokenizer
        self.ids = tokenizer(" ".join(corpus), add_special_tokens=False)["input_ids"]

    def draw(self, rng: random.Random) -> tuple[str, int]:
        length = rng.randint(*LENGTHS)
        start = rng.randrange(len(self.ids) - length)
        prompt = self.tokenizer.decode(self.ids[start:start + length]).replace("\ufffd", "")
        return prompt.strip() or "hello", rng.randint(*LENGTHS)


def load(send: Send, workload: Workload, concurrency: int, seconds: float) -> dict:
    """Closed loop: `concurrency` clients send back to back for `seconds` (after a short
    warm-up that is not counted). Throughput counts the share of each request that falls in
    the window (its tokens spread over its duration), so a long request counts for the time
    it ran rather than not at all; latencies are those of the requests started in it (the
    clients finish them after the window ends)."""
    done: list[tuple[float, float, Answer]] = []  # started, ended, answer
    errors = [0]
    lock = threading.Lock()
    counted_from = time.perf_counter() + WARM_UP_S
    stop = counted_from + seconds

    def client(index: int) -> None:
        rng = random.Random(index)
        with httpx.Client(timeout=3600) as session:
            while (started := time.perf_counter()) < stop:
                prompt, max_tokens = workload.draw(rng)
                try:
                    answer = send(session, prompt, max_tokens, rng.randrange(2**31))
                except Exception:  # noqa: BLE001 - counted, the run goes on
                    with lock:
                        errors[0] += 1
                    continue
                with lock:
                    done.append((started, time.perf_counter(), answer))

    threads = [threading.Thread(target=client, args=(i,)) for i in range(concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()

    def share(began: float, ended: float) -> float:
        overlap = min(ended, stop) - max(began, counted_from)
        return max(0.0, overlap) / max(ended - began, 1e-9)

    inside = [(b, e, a) for b, e, a in done if counted_from <= b < stop]
    counted = all(a.tokens is not None for _, _, a in done)
    return {"concurrency": concurrency, "requests": len(inside), "errors": errors[0],
            "rps": sum(share(b, e) for b, e, _ in done) / seconds,
            "tokens_per_s": (sum(share(b, e) * a.tokens for b, e, a in done) / seconds
                             if counted else None),
            "ttft_p50_ms": _pct([a.first_token_s for _, _, a in inside], 0.5),
            "ttft_p99_ms": _pct([a.first_token_s for _, _, a in inside], 0.99),
            "p99_ms": _pct([e - b for b, e, _ in inside], 0.99)}


def _pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return 1000 * ordered[int(q * (len(ordered) - 1))]


def ours(url: str, key: str) -> Send:
    """Streamed completions: the first event is the first token."""
    def send(session: httpx.Client, prompt: str, max_tokens: int, seed: int) -> Answer:
        started, first, usage = time.perf_counter(), None, None
        with session.stream("POST", f"{url}/v1/completions",
                            headers={"Authorization": f"Bearer {key}"},
                            json={"prompt": prompt, "max_tokens": max_tokens,
                                  "temperature": 0.8, "stream": True}) as reply:
            reply.raise_for_status()
            for line in reply.iter_lines():
                if not line.startswith("data: {"):
                    continue
                first = first or time.perf_counter() - started
                usage = json.loads(line[6:]).get("usage") or usage
        return Answer(first, usage["completion_tokens"])
    return send


def mlflow_serve_client(url: str, tokenizer: Any | None) -> Send:
    """tokenizer: what counts an answer's tokens (the pyfunc answers text only); None where
    re-tokenizing would not count them (random weights: most decoded pieces are empty)."""
    def send(session: httpx.Client, prompt: str, max_tokens: int, seed: int) -> Answer:
        started = time.perf_counter()
        reply = session.post(f"{url}/invocations", json={
            "dataframe_records": [{"prompt": prompt}],
            "params": {"max_new_tokens": max_tokens, "temperature": 0.8, "seed": seed}})
        reply.raise_for_status()
        text = reply.json()["predictions"][0]
        tokens = (len(tokenizer(text, add_special_tokens=False)["input_ids"])
                  if tokenizer is not None else None)
        return Answer(time.perf_counter() - started, tokens)
    return send


@contextlib.contextmanager
def mlflow_serve(uri: str, env: dict[str, str], log: Path) -> Iterator[str]:
    port = free_port()
    bindir = Path(sys.executable).parent
    with open(log, "ab") as out:
        # It execs `uvicorn` by name: the venv's bin must come first on PATH.
        proc = subprocess.Popen(
            [str(bindir / "mlflow"), "models", "serve", "-m", uri, "--env-manager", "local",
             "--host", "127.0.0.1", "--port", str(port)], stdout=out, stderr=subprocess.STDOUT,
            env=os.environ | env | {"PATH": f"{bindir}:{os.environ['PATH']}"})
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            with contextlib.suppress(requests.RequestException):
                if requests.get(f"{url}/ping", timeout=2).ok:
                    break
            time.sleep(0.5)
        else:
            raise TimeoutError(f"mlflow models serve not up; see {log}")
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def metric(url: str, name: str) -> float:
    text = requests.get(f"{url}/metrics", timeout=30).text
    return sum(float(line.split()[-1]) for line in text.splitlines() if line.startswith(name))


def zipf_workload(prompts: list[str], seed: int = 0) -> list[str]:
    pool = prompts[:ZIPF_PROMPTS]
    weights = [1 / (rank + 1) ** ZIPF_S for rank in range(len(pool))]
    return random.Random(seed).choices(pool, weights, k=ZIPF_REQUESTS)


def replay(url: str, key: str, workload: list[str], concurrency: int = 16) -> dict:
    """Send the workload greedily (deterministic, so cacheable); tokens the model made."""
    tokens_before = metric(url, "aigc_generated_tokens_total")
    cached = [0]
    lock = threading.Lock()
    chunks = [workload[i::concurrency] for i in range(concurrency)]

    def client(chunk: list[str]) -> None:
        session = requests.Session()
        for prompt in chunk:
            reply = session.post(f"{url}/v1/generate", timeout=120,
                                 headers={"Authorization": f"Bearer {key}"},
                                 json={"prompt": prompt, "max_new_tokens": NEW_TOKENS,
                                       "temperature": 0})
            reply.raise_for_status()
            if reply.json()["cached"]:
                with lock:
                    cached[0] += 1

    began = time.perf_counter()
    threads = [threading.Thread(target=client, args=(c,)) for c in chunks]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return {"requests": len(workload), "cached": cached[0],
            "seconds": time.perf_counter() - began,
            "generated_tokens": metric(url, "aigc_generated_tokens_total") - tokens_before}


def serve_champion(root: Path, model_dir: Path, name: str, run: str = "serve"
                   ) -> dict[str, str]:
    """Register model_dir as the champion of `name` (a new version per `run`); the server's
    environment."""
    import mlflow

    settings = demo_settings(root)
    ctx = StageContext(stage="register", dag_id="bench", run_id=f"{run}-{name}",
                       config=LifecycleConfig(), settings=settings)
    with stage_run(ctx):
        version = register(ctx, name, str(model_dir), "bench", {})
    mlflow.MlflowClient().set_registered_model_alias(name, CHAMPION, version)
    return settings.to_env() | {"AIGC_MODEL_NAME": name,
                                "AIGC_FEEDBACK_DB": str(root / "feedback.db")}


def onnx_servers(root: Path, model_dir: Path, name: str, cfg: LifecycleConfig,
                 frame) -> dict[str, dict[str, str]]:
    """The same model as ONNX fp32 and ModelOpt INT8 graphs with past key/values, each a
    registered version that a continuous-batching server pins; settings by row name.
    `frame`: training pairs, for INT8's calibration."""
    from tasks.compress.methods import METHODS, Workbench

    wb = Workbench(cfg, model_dir, frame)
    settings = demo_settings(root)
    servers: dict[str, dict[str, str]] = {}
    for method in ("onnx_fp32", "modelopt_int8"):
        out = root / f"{name}-{method}"
        out.mkdir(parents=True)
        METHODS[method](wb, out)
        ctx = StageContext(stage="register", dag_id="bench", run_id=f"{method}-{name}",
                           config=cfg, settings=settings)
        with stage_run(ctx):
            version = register(ctx, name, str(out), "bench", {}, ("onnxruntime",))
        servers[f"continuous, {method}"] = OURS["continuous"] | {"AIGC_SERVE_VERSION": version}
    return servers


def swap(root: Path, model_dir: Path, env: dict[str, str], secret: dict[str, str],
         workload: Workload, seconds: float) -> dict:
    """P99 before, during and after a promotion under load (continuous batching,
    concurrency 16): the champion alias moves to a new version and the server reloads."""
    timeline: list[tuple[float, float, bool]] = []  # start, latency, ok
    stop = threading.Event()
    with local_server(env | secret | OURS["continuous"], root / "swap.log") as server:
        send = ours(server.url, secret["AIGC_API_KEYS"])

        def client(index: int) -> None:
            rng = random.Random(1000 + index)
            with httpx.Client(timeout=600) as session:
                while not stop.is_set():
                    prompt, max_tokens = workload.draw(rng)
                    began = time.perf_counter()
                    try:
                        send(session, prompt, max_tokens, 0)
                        ok = True
                    except Exception:  # noqa: BLE001 - counted as failed
                        ok = False
                    timeline.append((began, time.perf_counter() - began, ok))

        threads = [threading.Thread(target=client, args=(i,)) for i in range(16)]
        for t in threads:
            t.start()
        time.sleep(WARM_UP_S + seconds)
        swap_began = time.perf_counter()
        serve_champion(root, model_dir, env["AIGC_MODEL_NAME"], run="promoted")
        requests.post(f"{server.url}/admin/reload", timeout=600,
                      headers={"Authorization": f"Bearer {secret['AIGC_ADMIN_KEY']}"}
                      ).raise_for_status()
        swap_ended = time.perf_counter()
        time.sleep(seconds)
        stop.set()
        for t in threads:
            t.join()
    first = min(b for b, _, _ in timeline) + WARM_UP_S
    phases = {"before": (first, swap_began), "during": (swap_began, swap_ended),
              "after": (swap_ended, swap_ended + seconds)}
    return {name: {"requests": len(rows := [(lat, ok) for b, lat, ok in timeline
                                             if lo <= b < hi]),
                   "failed": sum(not ok for _, ok in rows),
                   "p99_ms": _pct([lat for lat, ok in rows if ok], 0.99),
                   "seconds": hi - lo}
            for name, (lo, hi) in phases.items()}


def keys() -> dict[str, str]:
    return {"AIGC_API_KEYS": secrets.token_urlsafe(16),
            "AIGC_ADMIN_KEY": secrets.token_urlsafe(16)}


@contextlib.contextmanager
def servers(env: dict[str, str], secret: dict[str, str], root: Path, tokenizer: Any | None,
            extra: dict[str, dict[str, str]] | None = None) -> Iterator[dict[str, Send]]:
    """Every server compared, up together (an idle one takes no CPU), by name."""
    with contextlib.ExitStack() as stack:
        sends: dict[str, Send] = {}
        for name, settings in (OURS | (extra or {})).items():
            server = stack.enter_context(local_server(env | secret | settings,
                                                      root / f"{name}.log", timeout_s=600))
            sends[name] = ours(server.url, secret["AIGC_API_KEYS"])
        url = stack.enter_context(mlflow_serve(f"models:/{env['AIGC_MODEL_NAME']}@champion",
                                               env, root / "mlflow-serve.log"))
        sends[MLFLOW] = mlflow_serve_client(url, tokenizer)
        yield sends


def compare(sends: dict[str, Send], workload: Workload, seconds: float, rounds: int,
            label: str, serial: frozenset[str] = frozenset()) -> list[dict]:
    """Rounds interleaved: each round runs every server at every concurrency once (the
    `serial` ones at concurrency 1 only)."""
    runs: dict[tuple[str, int], list[dict]] = {}
    for r in range(rounds):
        for c in CONCURRENCY:
            for name, send in sends.items():
                if c > 1 and name in serial:
                    continue
                row = load(send, workload, c, seconds)
                print(f"[{label} round {r + 1}] {name}: {row}", flush=True)
                runs.setdefault((name, c), []).append(row)
    return [summarise(label, name, c, rows) for (name, c), rows in runs.items()]


def summarise(label: str, name: str, c: int, rows: list[dict]) -> dict:
    """The median of the rounds, and the spread (range) of tokens per second."""
    def median(key: str) -> float | None:
        values = [r[key] for r in rows if r[key] is not None]
        return statistics.median(values) if values else None

    rates = [r["tokens_per_s"] for r in rows if r["tokens_per_s"] is not None]
    return {"size": label, "server": name, "concurrency": c, "rounds": len(rows),
            "requests": sum(r["requests"] for r in rows),
            "errors": sum(r["errors"] for r in rows),
            **{k: median(k) for k in ("rps", "tokens_per_s", "ttft_p50_ms", "ttft_p99_ms",
                                      "p99_ms")},
            "tokens_per_s_range": [min(rates), max(rates)] if rates else None}


def _tokenizer(folder: Path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(folder))


def corpus() -> list[str]:
    frame = load_demo(["english", "chinese"])
    return [f"{p} {r}" for p, r in zip(frame["prompt"], frame["response"], strict=True)]


def real_size(root: Path, sizes: list[str], seconds: float, rounds: int) -> None:
    from tasks.scaffold import scaffold

    results: dict = {"machine": machine(), "rows": []}
    for size in sizes:
        arch = "llama" if size.startswith("llama") else "gpt2"
        folder = scaffold(arch, root / size, size="gpt2-small")
        env = serve_champion(root, folder, f"bench-{size}")
        tokenizer = _tokenizer(folder)
        onnx = onnx_servers(root, folder, f"bench-{size}", LifecycleConfig.from_dict(REAL_CONF),
                            load_demo(["english", "chinese"]))
        # Random weights: re-tokenizing a text answer undercounts it (60 generated tokens
        # decoded to 14 characters, 3 tokens), so mlflow's row gives requests/s only.
        with servers(env, keys(), root, None, onnx) as sends:
            # It answers one request at a time: at 16 clients and 124 M parameters the
            # requests still queued when a row's window ends take many minutes to drain.
            results["rows"] += compare(sends, Workload(tokenizer, corpus()), seconds, rounds,
                                       size, serial=frozenset({MLFLOW}))
    (PROJECT_ROOT / "bench" / "results" / "serving-real.json").write_text(
        json.dumps(results, indent=2))
    update_section("serving-real", "### Real size\n\n" + "\n".join(
        [f"`.venv/bin/python bench/server_load.py --size {','.join(sizes)} --seconds "
         f"{seconds:g} --rounds {rounds}` — {results['machine']}; random weights, so every "
         f"answer runs to its max_tokens; `{MLFLOW}` at concurrency 1 only (it answers one "
         "request at a time, so more clients only queue), its tokens not counted (it answers "
         "text, and the text of random weights' tokens is mostly empty).", "",
         f"On the CPU both batchings are compute-bound at this size, which caps their ratio: "
         f"request-level batching pads 32 prompts to the longest and decodes 32 rows to the "
         f"longest answer (expected {expected_max(LENGTHS, 32):.0f} tokens each), continuous "
         f"batching computes each request's own lengths (mean {sum(LENGTHS) / 2:.0f}), so "
         f"at most about {expected_max(LENGTHS, 32) / (sum(LENGTHS) / 2):.2f}x the tokens/s for "
         "the same work per token. At the demo size per-step overhead dominates instead, "
         "which request-level batching pays for every padded step.", ""]
        + table(results["rows"])))


def expected_max(bounds: tuple[int, int], n: int) -> float:
    """The expected largest of n integers drawn uniformly from bounds (inclusive)."""
    low, high = bounds
    return low + (high - low) * n / (n + 1)


def machine() -> str:
    return f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs"


def table(rows: list[dict]) -> list[str]:
    def ms(value: float | None) -> str:
        return "-" if value is None else f"{value:,.0f}"

    def rate(r: dict) -> str:
        if r["tokens_per_s"] is None:
            return "not counted"
        low, high = r["tokens_per_s_range"]
        return f"{r['tokens_per_s']:.0f} ({low:.0f}-{high:.0f})"

    lines = ["| model | server | concurrency | req/s | generated tokens/s (range) | "
             "TTFT P50 ms | TTFT P99 ms | P99 ms | errors |",
             "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    lines += [f"| {r['size']} | {r['server']} | {r['concurrency']} | {r['rps']:.2f} | "
              f"{rate(r)} | {ms(r['ttft_p50_ms'])} | "
              f"{ms(r['ttft_p99_ms'])} | {ms(r['p99_ms'])} | {r['errors']} |" for r in rows]
    lines.append("")
    by = {(r["size"], r["server"], r["concurrency"]): r for r in rows}
    for size in dict.fromkeys(r["size"] for r in rows):
        cont, req = by.get((size, "continuous", 32)), by.get((size, "request-level", 32))
        if cont and req and req["tokens_per_s"] and req["ttft_p99_ms"]:
            lines.append(
                f"- {size}, concurrency 32: continuous batching "
                f"{cont['tokens_per_s'] / req['tokens_per_s']:.2f}x the generated tokens/s of "
                f"request-level batching (target >= 2x), time to first token P99 "
                f"{cont['ttft_p99_ms'] / req['ttft_p99_ms']:.2f}x (target < 1x)")
        for method in ("onnx_fp32", "modelopt_int8"):
            for c in CONCURRENCY:
                row, base = by.get((size, f"continuous, {method}", c)), by.get(
                    (size, "continuous", c))
                if row and base and base["tokens_per_s"]:
                    lines.append(f"- {size}, concurrency {c}: {method} "
                                 f"{row['tokens_per_s'] / base['tokens_per_s']:.2f}x the "
                                 "generated tokens/s of the fp32 PyTorch model (target >= 1x)")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--steps", type=int, default=300, help="demo model training steps")
    parser.add_argument("--seconds", type=float, default=10, help="per row and round")
    parser.add_argument("--rounds", type=int, default=2, help="interleaved rounds")
    parser.add_argument("--size", default="demo",
                        help="demo, or real sizes: gpt2-small,llama-small")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        if args.size != "demo":
            real_size(root, args.size.split(","), args.seconds, args.rounds)
            return
        model_dir, train_df, val = train_demo(root, args.steps)
        env = serve_champion(root, model_dir, MODEL_NAME)
        tokenizer = _tokenizer(model_dir)
        secret = keys()
        results: dict = {"machine": machine()}
        workload = Workload(tokenizer, corpus())
        onnx = onnx_servers(root, model_dir, MODEL_NAME, LifecycleConfig(), train_df)
        with servers(env, secret, root, tokenizer, onnx) as sends:
            results["rows"] = compare(sends, workload, args.seconds, args.rounds, "demo")
        results["swap"] = swap(root, model_dir, env, secret, workload, args.seconds)
        print("swap", results["swap"], flush=True)
        workload = zipf_workload(sorted(set(val["prompt"])))
        for name, size in (("cache on", "4096"), ("cache off", "0")):
            with local_server(env | secret | {"AIGC_CACHE_SIZE": size},
                              root / f"{name}.log") as server:
                wait_ready(server.url, 60)
                results[name] = replay(server.url, secret["AIGC_API_KEYS"], workload)
                print(name, results[name], flush=True)
    write(results, args)


def write(results: dict, args: argparse.Namespace) -> None:
    out = PROJECT_ROOT / "bench" / "results" / "serving.json"
    out.write_text(json.dumps(results, indent=2))
    lines = [f"`.venv/bin/python bench/server_load.py --seconds {args.seconds:g} --rounds "
             f"{args.rounds}` — {results['machine']}; demo model; mixed workload: prompt "
             f"tokens and max_tokens drawn from {LENGTHS[0]}-{LENGTHS[1]}, sampled at "
             "temperature 0.8 (no cache hits); closed loop, each client sends back to back; "
             "streamed completions (time to first token = the first event).", ""]
    lines += table(results["rows"])
    lines += ["", "A promotion under load (continuous batching, concurrency 16): the champion "
              "alias moves to a new version and the server reloads.", "",
              "| phase | seconds | requests | failed | P99 ms |",
              "| --- | ---: | ---: | ---: | ---: |"]
    lines += [f"| {name} | {p['seconds']:.1f} | {p['requests']} | {p['failed']} | "
              f"{'-' if p['p99_ms'] is None else format(p['p99_ms'], ',.0f')} |"
              for name, p in results["swap"].items()]
    on, off = results["cache on"], results["cache off"]
    saved = 1 - on["generated_tokens"] / off["generated_tokens"]
    lines += ["", f"Cache, Zipf(s={ZIPF_S}) over {ZIPF_PROMPTS} prompts, {ZIPF_REQUESTS} greedy "
              f"requests of {NEW_TOKENS} tokens at concurrency 16:",
              f"- hit ratio {on['cached'] / on['requests']:.1%}; generated tokens "
              f"{on['generated_tokens']:.0f} vs {off['generated_tokens']:.0f} without the cache "
              f"-> {saved:.1%} of the model compute saved (target >= 60%); wall "
              f"{on['seconds']:.1f} s vs {off['seconds']:.1f} s"]
    update_section("serving", "## Serving\n\n" + "\n".join(lines))


if __name__ == "__main__":
    main()
