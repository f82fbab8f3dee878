"""Serving side by side on the demo model: our server with dynamic batching on and off, and
`mlflow models serve` of the same registered model; throughput and P50/P99 latency at
concurrency 1/8/16/32. Then the response cache on a Zipf-distributed prompt workload: hit
ratio and the generated tokens (model compute) it saved. Writes bench/results/serving.json
and docs/BENCHMARKS.md.

With `--size gpt2-small` (and `llama-small`): the same server at real size (124 M and 127 M
parameters, random weights, so every request generates all its tokens), batching on and off
at concurrency 1 and 16; results in bench/results/serving-real.json.

    .venv/bin/python bench/server_load.py [--steps 300] [--seconds 12]
    .venv/bin/python bench/server_load.py --size gpt2-small,llama-small [--seconds 30]
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
from pathlib import Path

import requests

from serving.local import free_port, local_server, wait_ready
from tasks.config import LifecycleConfig
from tasks.registry.register import CHAMPION, register
from tasks.settings import PROJECT_ROOT
from tasks.stage import StageContext
from tasks.tracking import stage_run

sys.path.insert(0, str(PROJECT_ROOT / "bench"))
from compression import demo_settings, train_demo  # noqa: E402
from report import update_section  # noqa: E402

CONCURRENCY = (1, 8, 16, 32)
REAL_CONCURRENCY = (1, 16)
NEW_TOKENS = 16
MODEL_NAME = "aigc-gpt2"
WARM_UP_S = 1.0
ZIPF_PROMPTS, ZIPF_S, ZIPF_REQUESTS = 500, 1.1, 2000


def load(send: Callable[[requests.Session, str, int], None], prompts: list[str],
         concurrency: int, seconds: float) -> dict:
    """Closed loop: `concurrency` clients send back to back for `seconds` (after a short
    warm-up that is not counted)."""
    latencies: list[float] = []
    errors = [0]
    lock = threading.Lock()
    counted_from = time.perf_counter() + WARM_UP_S
    stop = counted_from + seconds

    def client(index: int) -> None:
        rng = random.Random(index)
        session = requests.Session()
        while (started := time.perf_counter()) < stop:
            try:
                send(session, rng.choice(prompts), rng.randrange(2**31))
            except Exception:  # noqa: BLE001 - counted, the run goes on
                with lock:
                    errors[0] += 1
                continue
            if started >= counted_from:
                with lock:
                    latencies.append(time.perf_counter() - started)

    threads = [threading.Thread(target=client, args=(i,)) for i in range(concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - counted_from
    latencies.sort()
    return {"concurrency": concurrency, "requests": len(latencies), "errors": errors[0],
            "rps": len(latencies) / wall,
            "p50_ms": 1000 * statistics.median(latencies) if latencies else None,
            "p99_ms": 1000 * latencies[int(0.99 * (len(latencies) - 1))] if latencies else None}


def ours(url: str, key: str) -> Callable[[requests.Session, str, int], None]:
    def send(session: requests.Session, prompt: str, seed: int) -> None:
        reply = session.post(f"{url}/v1/generate", headers={"Authorization": f"Bearer {key}"},
                             # No seed: unseeded sampling is never cached, so every
                             # request reaches the model (clients repeat their sequences).
                             json={"prompt": prompt, "max_new_tokens": NEW_TOKENS,
                                   "temperature": 0.8}, timeout=120)
        reply.raise_for_status()
    return send


def mlflow_serve_client(url: str) -> Callable[[requests.Session, str, int], None]:
    def send(session: requests.Session, prompt: str, seed: int) -> None:
        reply = session.post(f"{url}/invocations", timeout=120, json={
            "dataframe_records": [{"prompt": prompt}],
            "params": {"max_new_tokens": NEW_TOKENS, "temperature": 0.8, "seed": seed}})
        reply.raise_for_status()
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


def serve_champion(root: Path, model_dir: Path, name: str) -> dict[str, str]:
    """Register model_dir as the champion of `name`; the server's environment."""
    import mlflow

    settings = demo_settings(root)
    ctx = StageContext(stage="register", dag_id="bench", run_id=f"serve-{name}",
                       config=LifecycleConfig(), settings=settings)
    with stage_run(ctx):
        version = register(ctx, name, str(model_dir), "bench", {})
    mlflow.MlflowClient().set_registered_model_alias(name, CHAMPION, version)
    return settings.to_env() | {"AIGC_MODEL_NAME": name,
                                "AIGC_FEEDBACK_DB": str(root / "feedback.db")}


def setup(root: Path, steps: int) -> tuple[dict[str, str], list[str]]:
    """Train the demo model, register it as champion; (server env, test prompts)."""
    model_dir, _, val = train_demo(root, steps)
    return serve_champion(root, model_dir, MODEL_NAME), sorted(set(val["prompt"]))


def real_size(root: Path, sizes: list[str], seconds: float) -> None:
    """Batching on and off at concurrency 1 and 16 for real-size models."""
    from tasks.data.source import load_demo
    from tasks.scaffold import scaffold

    prompts = sorted(set(load_demo(["english", "chinese"])["prompt"]))
    keys = {"AIGC_API_KEYS": secrets.token_urlsafe(16),
            "AIGC_ADMIN_KEY": secrets.token_urlsafe(16)}
    results: dict = {"machine": f"{platform.processor() or platform.machine()}, "
                     f"{os.cpu_count()} CPUs", "new_tokens": NEW_TOKENS, "rows": []}
    for size in sizes:
        arch = "llama" if size.startswith("llama") else "gpt2"
        folder = scaffold(arch, root / size, size="gpt2-small")
        env = serve_champion(root, folder, f"bench-{size}")
        for name, extra in (("batching on", {"AIGC_MAX_BATCH": "16"}),
                            ("batching off", {"AIGC_MAX_BATCH": "1"})):
            with local_server(env | keys | extra, root / f"{size}-{name}.log") as server:
                for c in REAL_CONCURRENCY:
                    row = {"size": size, "server": name} | load(
                        ours(server.url, keys["AIGC_API_KEYS"]), prompts, c, seconds)
                    print(row, flush=True)
                    results["rows"].append(row)
    (PROJECT_ROOT / "bench" / "results" / "serving-real.json").write_text(
        json.dumps(results, indent=2))
    update_section("serving-real", render_real(results))


def render_real(results: dict) -> str:
    rows = results["rows"]
    lines = ["| model | server | concurrency | req/s | P50 ms | P99 ms | errors |",
             "| --- | --- | ---: | ---: | ---: | ---: | ---: |"]
    lines += [f"| {r['size']} | {r['server']} | {r['concurrency']} | {r['rps']:.2f} | "
              f"{r['p50_ms']:.0f} | {r['p99_ms']:.0f} | {r['errors']} |" for r in rows]
    by = {(r["size"], r["server"], r["concurrency"]): r for r in rows}
    lines += ["", f"{results['machine']}; random weights, {results['new_tokens']} new tokens "
              "per request, sampled; closed loop.", ""]
    for size in dict.fromkeys(r["size"] for r in rows):
        for c in REAL_CONCURRENCY:
            on, off = by[(size, "batching on", c)], by[(size, "batching off", c)]
            lines.append(f"- {size}, concurrency {c}: batching {on['rps'] / off['rps']:.2f}x "
                         f"the throughput, P99 {on['p99_ms'] / off['p99_ms']:.2f}x")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--steps", type=int, default=300, help="demo model training steps")
    parser.add_argument("--seconds", type=float, default=12, help="per concurrency level")
    parser.add_argument("--size", default="demo",
                        help="demo, or real sizes: gpt2-small,llama-small")
    args = parser.parse_args()
    if args.size != "demo":
        with tempfile.TemporaryDirectory() as tmp:
            real_size(Path(tmp), args.size.split(","), args.seconds)
        return
    results: dict = {"machine": f"{platform.processor() or platform.machine()}, "
                     f"{os.cpu_count()} CPUs", "new_tokens": NEW_TOKENS, "rows": []}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        env, prompts = setup(root, args.steps)
        keys = {"AIGC_API_KEYS": secrets.token_urlsafe(16),
                "AIGC_ADMIN_KEY": secrets.token_urlsafe(16)}
        for name, extra in (("ours, batching on", {"AIGC_MAX_BATCH": "16"}),
                            ("ours, batching off", {"AIGC_MAX_BATCH": "1"})):
            with local_server(env | keys | extra, root / f"{name}.log") as server:
                for c in CONCURRENCY:
                    row = {"server": name} | load(ours(server.url, keys["AIGC_API_KEYS"]),
                                                  prompts, c, args.seconds)
                    print(row, flush=True)
                    results["rows"].append(row)
                if extra["AIGC_MAX_BATCH"] == "16":
                    results["mean_batch"] = (metric(server.url, "aigc_batch_size_sum")
                                             / metric(server.url, "aigc_batch_size_count"))
        with mlflow_serve(f"models:/{env['AIGC_MODEL_NAME']}@champion", env,
                          root / "mlflow-serve.log") as url:
            for c in CONCURRENCY:
                row = {"server": "mlflow models serve"} | load(mlflow_serve_client(url),
                                                               prompts, c, args.seconds)
                print(row, flush=True)
                results["rows"].append(row)
        workload = zipf_workload(prompts)
        for name, size in (("cache on", "4096"), ("cache off", "0")):
            with local_server(env | keys | {"AIGC_CACHE_SIZE": size},
                              root / f"{name}.log") as server:
                wait_ready(server.url, 60)
                results[name] = replay(server.url, keys["AIGC_API_KEYS"], workload)
                print(name, results[name], flush=True)
    write(results)


def write(results: dict) -> None:
    out = PROJECT_ROOT / "bench" / "results" / "serving.json"
    out.write_text(json.dumps(results, indent=2))
    rows = results["rows"]
    lines = [f"`.venv/bin/python bench/server_load.py` — {results['machine']}; demo model, "
             f"{results['new_tokens']} new tokens per request, sampled (no cache hits); "
             "closed loop, each client sends back to back.", "",
             "| server | concurrency | req/s | P50 ms | P99 ms | errors |",
             "| --- | ---: | ---: | ---: | ---: | ---: |"]
    lines += [f"| {r['server']} | {r['concurrency']} | {r['rps']:.1f} | {r['p50_ms']:.0f} | "
              f"{r['p99_ms']:.0f} | {r['errors']} |" for r in rows]
    by = {(r["server"], r["concurrency"]): r for r in rows}
    lines += ["", f"Mean batch with batching on: {results['mean_batch']:.1f} requests.", ""]
    for c in CONCURRENCY:
        on, off = by[("ours, batching on", c)], by[("ours, batching off", c)]
        ml = by[("mlflow models serve", c)]
        lines.append(f"- concurrency {c}: batching {on['rps'] / off['rps']:.2f}x the "
                     f"throughput of no batching, {on['rps'] / ml['rps']:.2f}x mlflow models "
                     "serve" + (" (target >= 3x at 16)" if c == 16 else ""))
    on, off = results["cache on"], results["cache off"]
    saved = 1 - on["generated_tokens"] / off["generated_tokens"]
    lines += ["", f"Cache, Zipf(s={ZIPF_S}) over {ZIPF_PROMPTS} prompts, {ZIPF_REQUESTS} greedy "
              "requests at concurrency 16:",
              f"- hit ratio {on['cached'] / on['requests']:.1%}; generated tokens "
              f"{on['generated_tokens']:.0f} vs {off['generated_tokens']:.0f} without the cache "
              f"-> {saved:.1%} of the model compute saved (target >= 60%); wall "
              f"{on['seconds']:.1f} s vs {off['seconds']:.1f} s"]
    update_section("serving", "## Serving\n\n" + "\n".join(lines))


if __name__ == "__main__":
    main()
