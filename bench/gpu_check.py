"""GPU-only checks, run on a CUDA machine: fp16 + GradScaler training against fp32 and bf16,
ModelOpt INT8 / FP8 calibration on CUDA with held-out perplexity, FP8 Q/DQ ONNX export, GPU
latency by precision, and whether TensorRT is importable.

    python bench/gpu_check.py --data DIR --out results.json   # on the GPU machine
    python bench/gpu_check.py --render results.json           # here: docs/BENCHMARKS.md

DIR holds the preprocess stage's train.parquet, validation.parquet and tokenizer/.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
import traceback
from pathlib import Path

import pandas as pd
import torch

from tasks.config import LifecycleConfig
from tasks.lm.artifact import LogitsOf, TorchLM, position_ids
from tasks.lm.likelihood import likelihood
from tasks.settings import PROJECT_ROOT

sys.path.insert(0, str(PROJECT_ROOT / "bench"))
from report import update_section  # noqa: E402


def train_by_precision(data: Path, tokenizer, out: Path) -> dict:
    from tasks.train.loop import train

    train_df = pd.read_parquet(data / "train.parquet")
    val_df = pd.read_parquet(data / "validation.parquet")
    rows = {}
    for precision in ("fp32", "fp16", "bf16"):
        cfg = LifecycleConfig(launcher="single", precision=precision)
        result = train(cfg, train_df, val_df, tokenizer, out / precision)
        rows[precision] = {k: result[k] for k in ("val_perplexity", "train_loss",
                                                  "tokens_per_second", "train_seconds")}
        rows[precision]["model_dir"] = result["model_uri"]
    return rows


def gpu_latency(module: torch.nn.Module, n_positions: int, batch: int = 8,
                repeats: int = 100) -> float:
    ids = torch.randint(0, 256, (batch, n_positions), device="cuda")
    mask = torch.ones_like(ids)
    pos = position_ids(mask)
    with torch.no_grad():
        for _ in range(10):
            module(ids, mask, pos)
        torch.cuda.synchronize()
        start = time.perf_counter()
        for _ in range(repeats):
            module(ids, mask, pos)
        torch.cuda.synchronize()
    return (time.perf_counter() - start) / repeats * 1000


def modelopt_on_cuda(model_dir: Path, data: Path, tokenizer, pairs) -> dict:
    import modelopt.torch.quantization as mtq
    from transformers import AutoModelForCausalLM

    from tasks.train.data import token_blocks

    blocks = token_blocks(pd.read_parquet(data / "train.parquet"), tokenizer, 64).ids[:128]
    rows = {}
    for name, qcfg in (("fp32", None), ("int8", mtq.INT8_DEFAULT_CFG),
                       ("fp8", mtq.FP8_DEFAULT_CFG)):
        module = LogitsOf(AutoModelForCausalLM.from_pretrained(str(model_dir))).cuda().eval()
        if qcfg is not None:
            def loop(m, blocks=blocks):
                for chunk in blocks.split(16):
                    chunk = chunk.cuda()
                    mask = torch.ones_like(chunk)
                    m(chunk, mask, position_ids(mask))
            with torch.no_grad():
                mtq.quantize(module, qcfg, forward_loop=loop)
        lik = likelihood(TorchLM(module, 64, "cuda"), tokenizer, pairs)
        rows[name] = {"perplexity": lik.perplexity, "char_perplexity": lik.char_perplexity,
                      "fake_quant_latency_ms_b8": gpu_latency(module, 64)}
        if name == "fp8":
            rows[name]["onnx"] = export_fp8(module)
    return rows


def export_fp8(module: torch.nn.Module) -> dict:
    import onnx

    ids = torch.randint(0, 256, (2, 64), device="cuda")
    mask = torch.ones_like(ids)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "fp8.onnx"
        try:
            torch.onnx.export(module, (ids, mask, position_ids(mask)), str(path),
                              input_names=["input_ids", "attention_mask", "position_ids"],
                              output_names=["logits"], opset_version=19, dynamo=False)
        except Exception as exc:  # noqa: BLE001 - the result records what happened
            return {"exported": False, "error": f"{type(exc).__name__}: {exc}"[:400]}
        ops = [n.op_type for n in onnx.load(str(path)).graph.node]
    return {"exported": True, "ops": {op: ops.count(op) for op in sorted(set(ops))
                                      if "Quant" in op or op in ("MatMul", "Gemm")}}


def precision_latency(model_dir: Path) -> dict:
    from transformers import AutoModelForCausalLM

    out = {}
    for name, dtype in (("fp32", torch.float32), ("fp16", torch.float16),
                        ("bf16", torch.bfloat16)):
        module = LogitsOf(AutoModelForCausalLM.from_pretrained(str(model_dir))).to(
            "cuda", dtype).eval()
        out[name] = {"latency_ms_b8": gpu_latency(module, 64),
                     "latency_ms_b64": gpu_latency(module, 64, batch=64)}
    return out


def run_checks(data: Path) -> dict:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(data / "tokenizer"))
    val = pd.read_parquet(data / "validation.parquet")
    pairs = list(val[["prompt", "response"]].itertuples(index=False, name=None))
    report: dict = {"torch": torch.__version__, "gpu": torch.cuda.get_device_name()}
    try:
        import tensorrt

        report["tensorrt"] = tensorrt.__version__
    except ImportError as exc:
        report["tensorrt"] = f"not importable: {exc}"
    with tempfile.TemporaryDirectory() as tmp:
        report["training"] = train_by_precision(data, tokenizer, Path(tmp))
        model_dir = Path(report["training"]["fp32"]["model_dir"])
        for key, step in (("modelopt", lambda: modelopt_on_cuda(model_dir, data, tokenizer,
                                                                pairs)),
                          ("latency", lambda: precision_latency(model_dir))):
            try:
                report[key] = step()
            except Exception:  # noqa: BLE001 - one failed check must not hide the others
                report[key] = {"error": traceback.format_exc()[-1500:]}
    return report


def render(results: dict) -> str:
    t, lines = results["training"], []
    lines += [f"On {results['gpu']} (torch {results['torch']}); TensorRT: "
              f"{results['tensorrt']}.", "",
              "| training precision | held-out ppl | tokens/s |", "| --- | ---: | ---: |"]
    lines += [f"| {k} | {v['val_perplexity']:.1f} | {v['tokens_per_second']:,.0f} |"
              for k, v in t.items()]
    if "error" not in results["modelopt"]:
        lines += ["", "| ModelOpt on CUDA | held-out ppl | vs fp32 |", "| --- | ---: | ---: |"]
        base = results["modelopt"]["fp32"]["perplexity"]
        lines += [f"| {k} | {v['perplexity']:.2f} | {v['perplexity'] / base - 1:+.2%} |"
                  for k, v in results["modelopt"].items()]
        lines += ["", f"FP8 Q/DQ ONNX export: {results['modelopt']['fp8']['onnx']}"]
    if "error" not in results["latency"]:
        lines += ["", "| GPU forward, 64 tokens | batch 8 (ms) | batch 64 (ms) |",
                  "| --- | ---: | ---: |"]
        lines += [f"| {k} | {v['latency_ms_b8']:.3f} | {v['latency_ms_b64']:.3f} |"
                  for k, v in results["latency"].items()]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data", type=Path)
    parser.add_argument("--out", type=Path)
    parser.add_argument("--render", type=Path, help="write docs/BENCHMARKS.md from results")
    args = parser.parse_args()
    if args.render:
        update_section("gpu-check", render(json.loads(args.render.read_text())))
        return
    results = run_checks(args.data)
    args.out.write_text(json.dumps(results, indent=2, default=str))
    print(json.dumps(results, indent=1, default=str))


if __name__ == "__main__":
    main()
