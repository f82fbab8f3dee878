"""Compression side by side at two sizes. Writes bench/results/compression.json and
docs/BENCHMARKS.md.

- demo: the demo model trained here; fp32, plain torch.ao quantize_dynamic (what a user
  reaches for first), fp32 in onnxruntime, and every CPU method of the compress stage:
  size on disk, latency at batch 1 and 8 over 64 tokens, held-out perplexity (quality).
- real: a GPT-2-small geometry (124 M parameters) and a Llama of the same geometry (127 M)
  with random weights: size and latency at batch 1 and 8 over 128 tokens for fp32 and every
  INT8 method (quality needs a trained model: it is read from the demo rows), and where the
  time goes (a profile of fp32 against the fastest INT8 method).

Latency rows take turns in rounds and keep the median: a burst of load elsewhere then
skews one round of every row instead of all rounds of one row.

    .venv/bin/python bench/compression.py [--steps 600] [--sizes demo,gpt2-small,llama-small]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
import torch

from tasks.cli import run_stage
from tasks.compress.measure import latency_ms, size_bytes
from tasks.compress.methods import METHODS, Workbench, save_torch
from tasks.config import LifecycleConfig
from tasks.data.preprocess import run as preprocess
from tasks.data.source import load_demo
from tasks.lm.artifact import LogitsOf, load_lm
from tasks.lm.model import load
from tasks.scaffold import scaffold
from tasks.settings import PROJECT_ROOT, Settings
from tasks.stage import StageContext
from tasks.train.base import scratch

sys.path.insert(0, str(PROJECT_ROOT / "bench"))
from report import update_section  # noqa: E402

# Methods that produce an INT8 model, and the runtime each is compared in.
INT8 = ("torch_ao_plain", "torch_int8_dynamic", "inc_int8_dynamic", "inc_int8_static",
        "inc_woq_rtn", "inc_woq_gptq", "qat_int8", "modelopt_int8")
RUNTIME_BASELINE = {"modelopt_int8": "onnx_fp32"}  # the others run in torch, as fp32 does
TARGET_SPEEDUP, TARGET_SIZE, TARGET_QUALITY = 1.5, 0.30, 0.01


def demo_settings(root: Path) -> Settings:
    """Artifacts and a SQLite MLflow under root: benchmarks leave the project's state alone."""
    return Settings(artifact_root=root, allowed_roots=(str(root),),
                    tracking_uri=f"sqlite:///{root}/mlflow.db",
                    mlflow_artifact_root=str(root / "mlartifacts"), experiment="bench")


def train_demo(root: Path, steps: int) -> tuple[Path, pd.DataFrame, pd.DataFrame]:
    root.mkdir(parents=True, exist_ok=True)
    settings = demo_settings(root)
    data = root / "dialogs.parquet"
    load_demo(["english", "chinese"]).to_parquet(data)
    cfg = LifecycleConfig(launcher="single", max_steps=steps, warmup_steps=steps // 12)
    base = scratch(cfg)
    prep = preprocess(StageContext(stage="preprocess", dag_id="bench", run_id="prep",
                                   config=cfg, settings=settings,
                                   inputs={"validate": {"dataset_uri": str(data)},
                                           "base_model": base}))
    train = run_stage(StageContext(stage="train", dag_id="bench", run_id="train", config=cfg,
                                   settings=settings,
                                   inputs={"preprocess": prep, "base_model": base}))
    return (Path(train["model_uri"]), pd.read_parquet(prep["splits"]["train"]),
            pd.read_parquet(prep["splits"]["validation"]))


def torch_ao_plain(wb: Workbench, out: Path) -> dict:
    """quantize_dynamic on the model as transformers builds it: only nn.Linear is matched,
    so GPT-2's Conv1D blocks stay fp32 and only the output head is quantized."""
    from torch.ao.quantization import quantize_dynamic

    model = quantize_dynamic(wb.model(), {torch.nn.Linear}, dtype=torch.qint8)
    return save_torch(LogitsOf(model), wb, out, "torch_ao_plain")


ROUNDS = {"demo": 7, "real": 5}
REPEATS = {"demo": ((1, 30), (8, 15)), "real": ((1, 5), (8, 3))}  # (batch, forwards)
DEMO_LENGTH, REAL_LENGTH = 64, 128
REAL_INT8 = ("torch_ao_plain", "onnx_fp32", "torch_int8_dynamic", "inc_int8_dynamic",
             "inc_int8_static", "inc_woq_rtn", "inc_woq_gptq", "qat_int8", "modelopt_int8")
REAL = {"gpt2-small": ("gpt2", REAL_INT8),
        "llama-small": ("llama", ("onnx_fp32", "torch_int8_dynamic", "inc_woq_rtn",
                                  "modelopt_int8"))}
# Real-size rows measure speed and size only: one short calibration and QAT fine-tune.
REAL_CONF = {"block_size": REAL_LENGTH, "batch_size": 8, "calibration_batches": 2,
             "finetune_steps": 2, "launcher": "single"}


def quality(name: str, folder: Path, pairs, build_s: float, report: dict) -> dict:
    lik = load(folder).likelihood(pairs, window=DEMO_LENGTH)
    return {"name": name, "folder": folder, "size_bytes": size_bytes(folder),
            "build_s": build_s, "perplexity": lik.perplexity,
            "char_perplexity": lik.char_perplexity, "parameters": report.get("parameters")}


def add_latency(rows: list[dict], length: int, kind: str) -> None:
    """Every row's median latency at each batch, rows taking turns round after round; the
    spread is the fastest and slowest round."""
    models = [load_lm(r["folder"])[0] for r in rows]
    samples: dict[tuple[int, int], list[float]] = {}
    for _ in range(ROUNDS[kind]):
        for i, lm in enumerate(models):
            for batch, repeats in REPEATS[kind]:
                samples.setdefault((i, batch), []).append(
                    latency_ms(lm, batch, length, repeats))
    for i, r in enumerate(rows):
        for batch, _ in REPEATS[kind]:
            times = samples[(i, batch)]
            r[f"latency_ms_b{batch}"] = statistics.median(times)
            r[f"latency_spread_b{batch}"] = [min(times), max(times)]
        r["folder"] = str(r["folder"])


def build_all(wb: Workbench, root: Path, methods: dict, rows: list[dict], pairs) -> None:
    for name, method in methods.items():
        out = root / name
        out.mkdir(parents=True)
        start = time.perf_counter()
        report = method(wb, out)
        row = (quality(name, out, pairs, time.perf_counter() - start, report) if pairs
               else {"name": name, "folder": out, "size_bytes": size_bytes(out),
                     "build_s": time.perf_counter() - start})
        rows.append(row)
        print(name, {k: v for k, v in row.items() if k != "folder"}, flush=True)


def demo_rows(root: Path, steps: int) -> list[dict]:
    model_dir, train_df, val_df = train_demo(root, steps)
    pairs = list(val_df[["prompt", "response"]].itertuples(index=False, name=None))
    wb = Workbench(LifecycleConfig(), model_dir, train_df)
    teacher = wb.model()
    rows = [quality("fp32", model_dir, pairs, 0.0, {
        "parameters": sum(p.numel() for p in teacher.parameters())})]
    methods = {"torch_ao_plain": torch_ao_plain} | {
        k: v for k, v in METHODS.items() if k != "tensorrt_int8"}
    build_all(wb, root / "candidates", methods, rows, pairs)
    add_latency(rows, DEMO_LENGTH, "demo")
    return rows


def real_rows(root: Path, size: str, train_df: pd.DataFrame) -> dict:
    """Speed and size of fp32 and the INT8 methods at a real size, and the profile that
    says where the fastest one's time goes."""
    arch, names = REAL[size]
    folder = scaffold(arch, root / size / "fp32", size="gpt2-small")
    wb = Workbench(LifecycleConfig.from_dict(REAL_CONF), folder, train_df)
    rows = [{"name": "fp32", "folder": folder, "size_bytes": size_bytes(folder),
             "parameters": sum(p.numel() for p in wb.model().parameters())}]
    extra = {"torch_ao_plain": torch_ao_plain}
    build_all(wb, root / size, {n: extra.get(n) or METHODS[n] for n in names}, rows, None)
    add_latency(rows, REAL_LENGTH, "real")
    same_runtime = [r for r in rows if r["name"] in ("torch_int8_dynamic", "qat_int8",
                                                     "inc_woq_rtn", "inc_woq_gptq")]
    fastest = min(same_runtime, key=lambda r: r["latency_ms_b8"])
    return {"size": size, "rows": rows, "profile": {
        r["name"]: profile(r["folder"]) for r in (rows[0], fastest)}}


def profile(folder: str, batch: int = 8) -> dict[str, float]:
    """Milliseconds of one forward by kind of work (self time of each op)."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    lm = load_lm(folder)[0]
    ids = torch.randint(0, 256, (batch, REAL_LENGTH), generator=torch.Generator().manual_seed(0))
    mask = torch.ones_like(ids)
    lm.logits(ids, mask)  # warm-up: a lazily packed head, allocator
    with torch_profile(activities=[ProfilerActivity.CPU]) as prof:
        lm.logits(ids, mask)
    kinds: dict[str, float] = {}
    for event in prof.key_averages():
        name = event.key
        kind = ("matrix products" if any(k in name for k in ("addmm", "aten::mm", "linear",
                                                              "matmul", "bmm"))
                else "attention" if "attention" in name or "softmax" in name
                else "quantize/dequantize" if "quantiz" in name or "_to_copy" in name
                else "other")
        kinds[kind] = kinds.get(kind, 0.0) + event.self_cpu_time_total / 1000
    return kinds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=600, help="demo model training steps")
    parser.add_argument("--sizes", default="demo,gpt2-small,llama-small")
    args = parser.parse_args()
    sizes = args.sizes.split(",")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        demo = demo_rows(root / "demo", args.steps) if "demo" in sizes else []
        train_df = load_demo(["english", "chinese"])
        real = [real_rows(root, size, train_df) for size in sizes if size in REAL]
    write(demo, real, args.steps)


def _loss(rows: list[dict], name: str) -> float | None:
    by = {r["name"]: r for r in rows}
    return by[name]["perplexity"] / rows[0]["perplexity"] - 1 if name in by else None


def _speedup(rows: list[dict], r: dict, batch: int = 8) -> float:
    """Latency against fp32 in the same runtime (ONNX Runtime for the ONNX model)."""
    by = {x["name"]: x for x in rows}
    base = by.get(RUNTIME_BASELINE.get(r["name"], "fp32"), rows[0])
    return base[f"latency_ms_b{batch}"] / r[f"latency_ms_b{batch}"]


def demo_verdicts(rows: list[dict]) -> list[str]:
    by = {r["name"]: r for r in rows}
    base = rows[0]
    lines = []
    d = by["distill"]
    retained = base["perplexity"] / d["perplexity"]
    ratio = d["parameters"] / base["parameters"]
    lines.append(f"- distill: {ratio:.0%} of the teacher's parameters (target <= 50%), quality "
                 f"retained {retained:.0%} (teacher ppl / student ppl, target >= 90%) -> "
                 f"{'met' if ratio <= 0.5 and retained >= 0.9 else 'MISSED'}")
    p = _loss(rows, "prune_structured")
    lines.append(f"- prune_structured (40% of block weights): quality {p:+.2%} "
                 f"(target <= 2%) -> {'met' if p <= 0.02 else 'MISSED'}")
    twins = [by["torch_int8_dynamic"]["latency_ms_b8"], by["qat_int8"]["latency_ms_b8"]]
    lines.append(f"- noise floor: torch_int8_dynamic and qat_int8 are the same architecture; "
                 f"their batch-8 latencies differ by {max(twins) / min(twins) - 1:.0%}")
    return lines


def real_verdicts(demo: list[dict], real: dict) -> list[str]:
    """The target at a real size: an INT8 method >= 1.5x fp32 at batch 8 in the same
    runtime, within 1 % quality (on the trained demo model) and <= 0.30x the size."""
    rows, lines = real["rows"], []
    base = rows[0]
    for r in rows:
        if r["name"] not in INT8:
            continue
        size, speed = r["size_bytes"] / base["size_bytes"], _speedup(rows, r)
        loss = _loss(demo, r["name"])
        ok = (size <= TARGET_SIZE and speed >= TARGET_SPEEDUP and loss is not None
              and loss <= TARGET_QUALITY)
        quality = f"{loss:+.2%}" if loss is not None else "n/a"
        lines.append(f"- {r['name']}: speed-up {speed:.2f}x at batch 8 (>= {TARGET_SPEEDUP}), "
                     f"size {size:.3f}x (<= {TARGET_SIZE}), demo quality {quality} "
                     f"(<= {TARGET_QUALITY:.0%}) -> {'met' if ok else 'MISSED'}")
    for name, kinds in real["profile"].items():
        total = sum(kinds.values())
        parts = ", ".join(f"{k} {v:.0f} ms" for k, v in sorted(kinds.items(),
                                                               key=lambda kv: -kv[1]))
        lines.append(f"- where the time goes, {name} at batch 8: {total:.0f} ms = {parts}")
    return lines


def _table(rows: list[dict], with_quality: bool) -> list[str]:
    base = rows[0]
    head = ("| model | size (bytes) | size vs fp32 | latency b1 (ms) | latency b8 (ms, spread) "
            "| speed-up b8 (same runtime) |")
    rule = "| --- | ---: | ---: | ---: | ---: | ---: |"
    if with_quality:
        head, rule = head + " held-out ppl | quality loss |", rule + " ---: | ---: |"
    table = [head, rule]
    for r in rows:
        spread = r["latency_spread_b8"]
        line = (f"| {r['name']} | {r['size_bytes']:,} | "
                f"{r['size_bytes'] / base['size_bytes']:.3f}x | {r['latency_ms_b1']:.2f} | "
                f"{r['latency_ms_b8']:.2f} ({spread[0]:.1f}-{spread[1]:.1f}) | "
                f"{_speedup(rows, r):.2f}x |")
        if with_quality:
            line += (f" {r['perplexity']:.2f} | "
                     f"{r['perplexity'] / base['perplexity'] - 1:+.2%} |")
        table.append(line)
    return table


def write(demo: list[dict], real: list[dict], steps: int) -> None:
    out = {"train_steps": steps, "cpu_count": os.cpu_count(), "torch": torch.__version__,
           "threads": torch.get_num_threads(),
           "machine": platform.processor() or platform.machine(), "demo": demo, "real": real}
    results = PROJECT_ROOT / "bench" / "results"
    results.mkdir(parents=True, exist_ok=True)
    (results / "compression.json").write_text(json.dumps(out, indent=2, default=str))
    text: list[str] = []
    if demo:
        text += _table(demo, with_quality=True) + [
            "", f"Demo model (4 layers, width 128, vocab 1,024) trained {steps} steps; "
            f"latency is one forward over batch x {DEMO_LENGTH} tokens: median of "
            f"{ROUNDS['demo']} interleaved rounds of per-row medians, {out['threads']} torch "
            f"threads on {out['cpu_count']} CPU cores, torch {out['torch']}. Perplexity is "
            "per token of the held-out answers given their prompts.", "", *demo_verdicts(demo)]
    for size in real:
        params = size["rows"][0]["parameters"]
        text += ["", f"**{size['size']}** ({params / 1e6:.1f} M parameters, random weights; "
                 f"batch x {REAL_LENGTH} tokens, {ROUNDS['real']} interleaved rounds)", "",
                 *_table(size["rows"], with_quality=False), "", *real_verdicts(demo, size)]
    update_section("compression", "\n".join(text))


if __name__ == "__main__":
    main()
