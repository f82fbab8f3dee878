"""Per-token decode latency of ONNX graphs with past key/values, against recomputing the
context and against PyTorch eager with a DynamicCache. Prints a table and writes
bench/results/onnx_decode.json.

Sizes (random weights, GPT-2): demo (the demo model's geometry: 4 layers, width 128, vocab
1,024) and gpt2-small (12 layers, width 768, 124 M parameters). Rows:
- PyTorch eager, DynamicCache: the transformers model feeding one new token per step;
- ONNX fp32, recompute: the whole context through onnxruntime for every new token (how
  ONNX artifacts generated before they carried a cache);
- ONNX fp32, past: the `onnx_fp32` compress method's graph, one new token per step;
- ModelOpt INT8 ONNX, past: the `modelopt_int8` method's graph, one new token per step.

Each measurement prefills a prompt of PROMPT tokens (not timed), then times STEPS steps of one
new token, so the context runs from PROMPT to PROMPT + STEPS; a round's per-token latency is
the median step (at a context of about 64 tokens). Rows take turns round after round (a
burst of load elsewhere then skews one round of every row instead of all rounds of one
row); the table shows the median round and the fastest-slowest spread.

    .venv/bin/python bench/onnx_decode.py [--sizes demo,gpt2-small] [--rounds 5]
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
from collections.abc import Callable
from pathlib import Path
from typing import Any

import onnxruntime as ort
import pandas as pd
import torch

from tasks.compress.methods import METHODS, Workbench
from tasks.config import LifecycleConfig
from tasks.data.source import load_demo
from tasks.lm.artifact import load_lm, position_ids
from tasks.lm.tokenizer import train_bpe
from tasks.scaffold import scaffold
from tasks.settings import PROJECT_ROOT
from tasks.train.loop import build_model

sys.path.insert(0, str(PROJECT_ROOT / "bench"))
from report import update_section  # noqa: E402

PROMPT, STEPS, BATCHES = 56, 16, (1, 8)
BUILD_CONF = {"block_size": 128, "batch_size": 8, "calibration_batches": 2,
              "launcher": "single"}
ROWS = ("PyTorch eager, DynamicCache", "ONNX fp32, recompute", "ONNX fp32, past",
        "ModelOpt INT8 ONNX, past")
# (ids, mask, positions, cache or None) -> (logits, cache): one decoding step, the cache
# being whatever the runtime keeps
Step = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, Any], tuple[torch.Tensor, Any]]


def checkpoint(root: Path, size: str, texts: list[str]) -> Path:
    """A transformers folder (random weights, a BPE tokenizer trained on the demo dialogs)."""
    if size == "gpt2-small":
        return scaffold("gpt2", root / size, size="gpt2-small")
    # The demo's layers, width and vocabulary; positions for the calibration blocks.
    cfg = LifecycleConfig(block_size=BUILD_CONF["block_size"])
    tokenizer = train_bpe(texts, cfg.vocab_size, special=["<|endoftext|>"],
                          bos="<|endoftext|>", eos="<|endoftext|>")
    folder = root / size
    build_model(cfg, tokenizer, None).save_pretrained(str(folder))
    tokenizer.save_pretrained(str(folder))
    return folder


def eager_step(model: torch.nn.Module) -> Step:
    """The transformers model with its own DynamicCache, kept from step to step."""
    from transformers import DynamicCache

    def step(ids: torch.Tensor, mask: torch.Tensor, positions: torch.Tensor,
             cache: Any) -> tuple[torch.Tensor, Any]:
        out = model(input_ids=ids, attention_mask=mask, position_ids=positions,
                    cache=DynamicCache() if cache is None else cache, use_cache=True)
        return out.logits, out.cache
    return step


def cached_ms(step: Step, ids: torch.Tensor) -> float:
    """Median ms of STEPS one-token steps after a prefill of `ids`."""
    mask = torch.ones_like(ids)
    logits, past = step(ids, mask, position_ids(mask), None)
    times = []
    for _ in range(STEPS):
        start = time.perf_counter()
        new = logits[:, -1:].argmax(-1)
        mask = torch.cat([mask, torch.ones_like(new)], dim=1)
        logits, past = step(new, mask, position_ids(mask)[:, -1:], past)
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)


def recompute_ms(logits_of: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
                 ids: torch.Tensor) -> float:
    """Median ms of STEPS new tokens, each recomputing the whole context."""
    times = []
    for _ in range(STEPS):
        start = time.perf_counter()
        new = logits_of(ids, torch.ones_like(ids))[:, -1:].argmax(-1)
        ids = torch.cat([ids, new], dim=1)
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)


def measure(size: str, root: Path, train_df: pd.DataFrame, rounds: int) -> list[dict]:
    folder = checkpoint(root, size, [*train_df["prompt"], *train_df["response"]])
    wb = Workbench(LifecycleConfig.from_dict(BUILD_CONF), folder, train_df)
    built = {}
    for method in ("onnx_fp32", "modelopt_int8"):
        out = root / f"{size}-{method}"
        out.mkdir()
        report = METHODS[method](wb, out)
        print(size, method, {k: v for k, v in report.items() if "error" in k}, flush=True)
        built[method] = load_lm(out)[0]
    eager = eager_step(wb.model())
    timers: dict[str, Callable[[torch.Tensor], float]] = {
        ROWS[0]: lambda ids: cached_ms(eager, ids),
        ROWS[1]: lambda ids: recompute_ms(built["onnx_fp32"].logits, ids),
        ROWS[2]: lambda ids: cached_ms(built["onnx_fp32"].step, ids),
        ROWS[3]: lambda ids: cached_ms(built["modelopt_int8"].step, ids)}
    g = torch.Generator().manual_seed(0)
    prompts = {b: torch.randint(3, len(wb.tokenizer), (b, PROMPT), generator=g) for b in BATCHES}
    samples: dict[tuple[str, int], list[float]] = {}
    with torch.no_grad():
        for timer in timers.values():  # warm-up: allocator, lazy kernels, first runs
            timer(prompts[1])
        for _ in range(rounds):
            for batch in BATCHES:
                for name, timer in timers.items():
                    samples.setdefault((name, batch), []).append(timer(prompts[batch]))
    rows = []
    for name in timers:
        row: dict = {"size": size, "row": name}
        for batch in BATCHES:
            times = samples[(name, batch)]
            row[f"ms_b{batch}"] = statistics.median(times)
            row[f"spread_b{batch}"] = [min(times), max(times)]
        rows.append(row)
    return rows


def table(rows: list[dict]) -> str:
    eager = {r["size"]: r for r in rows if r["row"] == ROWS[0]}
    lines = ["| size | row | " + " | ".join(f"ms/token b{b} (spread) | vs eager b{b}"
                                            for b in BATCHES) + " |",
             "| --- | --- |" + " ---: | ---: |" * len(BATCHES)]
    for r in rows:
        cells = [f"{r[f'ms_b{b}']:.2f} ({r[f'spread_b{b}'][0]:.2f}-{r[f'spread_b{b}'][1]:.2f})"
                 f" | {eager[r['size']][f'ms_b{b}'] / r[f'ms_b{b}']:.2f}x" for b in BATCHES]
        lines.append(f"| {r['size']} | {r['row']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="demo,gpt2-small")
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    train_df = load_demo(["english", "chinese"])
    with tempfile.TemporaryDirectory() as tmp:
        rows = [r for size in args.sizes.split(",")
                for r in measure(size, Path(tmp), train_df, args.rounds)]
    out = {"cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
           "torch": torch.__version__, "onnxruntime": ort.__version__,
           "machine": platform.processor() or platform.machine(), "prompt": PROMPT,
           "steps": STEPS, "rounds": args.rounds, "rows": rows}
    results = PROJECT_ROOT / "bench" / "results"
    results.mkdir(parents=True, exist_ok=True)
    (results / "onnx_decode.json").write_text(json.dumps(out, indent=2))
    note = (f"Prompt {PROMPT} tokens, then {STEPS} one-token steps (context {PROMPT}-"
            f"{PROMPT + STEPS}), a round's latency their median; median of {args.rounds} "
            f"interleaved rounds, {out['torch_threads']} torch threads on {out['cpu_count']} "
            f"CPU cores, torch {out['torch']}, onnxruntime {out['onnxruntime']}.")
    print(table(rows) + "\n\n" + note)
    update_section("onnx-decode", "## ONNX decoding with past key/values\n\n"
                   f"`.venv/bin/python bench/onnx_decode.py --sizes {args.sizes} --rounds "
                   f"{args.rounds}` — per-token latency.\n\n{table(rows)}\n\n{note}")


if __name__ == "__main__":
    main()
