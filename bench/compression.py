"""Compression side by side on the demo model: fp32, plain torch.ao quantize_dynamic (what a
user reaches for first), and every CPU method of the compress stage. Size on disk, latency at
batch 1 and 8 (median forward over a full context, same process and threads for every row)
and held-out perplexity. Writes bench/results/compression.json and docs/BENCHMARKS.md.

    .venv/bin/python bench/compression.py [--steps 600]
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
from tasks.compress.methods import METHODS, Workbench, export_onnx, save_meta, save_torch
from tasks.config import LifecycleConfig
from tasks.data.preprocess import run as preprocess
from tasks.data.source import load_demo
from tasks.evaluate.metrics import likelihood
from tasks.registry.runtime import LogitsOf, load_lm
from tasks.settings import PROJECT_ROOT, Settings
from tasks.stage import StageContext

sys.path.insert(0, str(PROJECT_ROOT / "bench"))
from report import update_section  # noqa: E402

INT8 = ("torch_ao_plain", "torch_int8_dynamic", "inc_int8_dynamic", "inc_int8_static",
        "qat_int8", "modelopt_int8")


def demo_settings(root: Path) -> Settings:
    """Artifacts and a SQLite MLflow under root: benchmarks leave the project's state alone."""
    return Settings(artifact_root=root, allowed_roots=(str(root),),
                    tracking_uri=f"sqlite:///{root}/mlflow.db",
                    mlflow_artifact_root=str(root / "mlartifacts"), experiment="bench")


def train_demo(root: Path, steps: int) -> tuple[Path, pd.DataFrame, pd.DataFrame]:
    settings = demo_settings(root)
    data = root / "dialogs.parquet"
    load_demo(["english", "chinese"]).to_parquet(data)
    cfg = LifecycleConfig(launcher="single", max_steps=steps)
    prep = preprocess(StageContext(stage="preprocess", dag_id="bench", run_id="prep",
                                   config=cfg, settings=settings,
                                   inputs={"validate": {"dataset_uri": str(data)}}))
    train = run_stage(StageContext(stage="train", dag_id="bench", run_id="train", config=cfg,
                                   settings=settings, inputs={"preprocess": prep}))
    return (Path(train["model_uri"]), pd.read_parquet(prep["splits"]["train"]),
            pd.read_parquet(prep["splits"]["validation"]))


def torch_ao_plain(wb: Workbench, out: Path) -> dict:
    """quantize_dynamic on the model as transformers builds it: only nn.Linear is matched,
    so GPT-2's Conv1D blocks stay fp32 and only the output head is quantized."""
    from torch.ao.quantization import quantize_dynamic

    model = quantize_dynamic(wb.model(), {torch.nn.Linear}, dtype=torch.qint8)
    return save_torch(LogitsOf(model), wb, out, "torch_ao_plain")


def onnx_fp32(wb: Workbench, out: Path) -> dict:
    """The fp32 model in onnxruntime: separates what the runtime gains from what INT8 gains
    in the ModelOpt row."""
    export_onnx(LogitsOf(wb.model()), wb.example(), out / "model.onnx")
    save_meta(out, "onnx", wb.tokenizer, wb.cfg.block_size, method="onnx_fp32")
    return {}


ROUNDS = 7


def quality(name: str, folder: Path, pairs, build_s: float, report: dict) -> dict:
    lm, tokenizer = load_lm(folder)
    lik = likelihood(lm, tokenizer, pairs)
    return {"name": name, "folder": folder, "size_bytes": size_bytes(folder),
            "build_s": build_s, "perplexity": lik.perplexity,
            "char_perplexity": lik.char_perplexity, "parameters": report.get("parameters")}


def add_latency(rows: list[dict]) -> None:
    """Rows take turns, ROUNDS times, and keep their median: a burst of load elsewhere on
    the machine then skews one round of every row instead of all rounds of one row."""
    models = [load_lm(r["folder"])[0] for r in rows]
    samples: dict[tuple[int, int], list[float]] = {}
    for _ in range(ROUNDS):
        for i, lm in enumerate(models):
            for batch, repeats in ((1, 30), (8, 15)):
                samples.setdefault((i, batch), []).append(latency_ms(lm, batch, repeats))
    for i, r in enumerate(rows):
        r["latency_ms_b1"] = statistics.median(samples[(i, 1)])
        r["latency_ms_b8"] = statistics.median(samples[(i, 8)])
        r["folder"] = str(r["folder"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--steps", type=int, default=600, help="demo model training steps")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        model_dir, train_df, val_df = train_demo(root, args.steps)
        pairs = list(val_df[["prompt", "response"]].itertuples(index=False, name=None))
        wb = Workbench(LifecycleConfig(), model_dir, train_df)
        teacher = wb.model()
        rows = [quality("fp32", model_dir, pairs, 0.0, {
            "parameters": sum(p.numel() for p in teacher.parameters())})]
        methods = {"torch_ao_plain": torch_ao_plain, "onnx_fp32": onnx_fp32} | {
            k: v for k, v in METHODS.items() if k != "tensorrt_int8"}
        for name, method in methods.items():
            out = root / "candidates" / name
            out.mkdir(parents=True)
            start = time.perf_counter()
            report = method(wb, out)
            rows.append(quality(name, out, pairs, time.perf_counter() - start, report))
            print(name, f"{rows[-1]['perplexity']:.2f}", flush=True)
        add_latency(rows)
    write(rows, args.steps)


def verdicts(rows: list[dict]) -> list[str]:
    base = rows[0]
    by = {r["name"]: r for r in rows}

    def loss(r: dict) -> float:
        return r["perplexity"] / base["perplexity"] - 1

    lines = []
    for name in INT8:
        r = by[name]
        size, speed = r["size_bytes"] / base["size_bytes"], base["latency_ms_b8"] / r[
            "latency_ms_b8"]
        ok = size <= 0.27 and loss(r) <= 0.01 and speed >= 1.5
        lines.append(f"- {name}: size {size:.3f}x (target <= 0.27), quality {loss(r):+.2%} "
                     f"(<= 1%), speed-up {speed:.2f}x at batch 8 (>= 1.5) -> "
                     f"{'met' if ok else 'MISSED'}")
    twins = [by["torch_int8_dynamic"]["latency_ms_b8"], by["qat_int8"]["latency_ms_b8"]]
    lines.append(f"- noise floor: torch_int8_dynamic and qat_int8 are the same architecture; "
                 f"their batch-8 latencies differ by {max(twins) / min(twins) - 1:.0%}")
    ort = by["onnx_fp32"]["latency_ms_b8"] / by["modelopt_int8"]["latency_ms_b8"]
    lines.append(f"- modelopt_int8 against fp32 in the same runtime (onnxruntime): {ort:.2f}x "
                 f"at batch 8")
    d = by["distill"]
    retained = base["perplexity"] / d["perplexity"]
    ratio = d["parameters"] / base["parameters"]
    lines.append(f"- distill: {ratio:.0%} of the teacher's parameters (target <= 50%), quality "
                 f"retained {retained:.0%} (teacher ppl / student ppl, target >= 90%) -> "
                 f"{'met' if ratio <= 0.5 and retained >= 0.9 else 'MISSED'}")
    p = by["prune_structured"]
    lines.append(f"- prune_structured (40% of block weights): quality {loss(p):+.2%} "
                 f"(target <= 2%) -> {'met' if loss(p) <= 0.02 else 'MISSED'}")
    return lines


def write(rows: list[dict], steps: int) -> None:
    base = rows[0]
    out = {"train_steps": steps, "cpu_count": os.cpu_count(), "torch": torch.__version__,
           "threads": torch.get_num_threads(),
           "machine": platform.processor() or platform.machine(), "rows": rows}
    results = PROJECT_ROOT / "bench" / "results"
    results.mkdir(parents=True, exist_ok=True)
    (results / "compression.json").write_text(json.dumps(out, indent=2))
    table = ["| model | size (bytes) | size vs fp32 | latency b1 (ms) | latency b8 (ms) | "
             "speed-up b8 | held-out ppl | quality loss |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for r in rows:
        table.append(
            f"| {r['name']} | {r['size_bytes']:,} | {r['size_bytes'] / base['size_bytes']:.3f}x "
            f"| {r['latency_ms_b1']:.2f} | {r['latency_ms_b8']:.2f} | "
            f"{base['latency_ms_b8'] / r['latency_ms_b8']:.2f}x | {r['perplexity']:.2f} | "
            f"{r['perplexity'] / base['perplexity'] - 1:+.2%} |")
    table += ["", f"Demo model (4 layers, width 128, vocab 1,024) trained {steps} steps; "
              f"latency is one forward over batch x 64 tokens: median of {ROUNDS} interleaved "
              f"rounds of per-row medians, {out['threads']} torch threads on "
              f"{out['cpu_count']} CPU cores, torch {out['torch']}. Perplexity is per token "
              f"on whole held-out dialogs.", "",
              *verdicts(rows)]
    update_section("compression", "\n".join(table))


if __name__ == "__main__":
    main()
