"""Training throughput and memory per rank, side by side, at two sizes.

- demo: the default 4-layer GPT-2 from scratch (fp32): single (1 and 2 threads), Horovod gloo
  x2, DDP x2 and FSDP x2, with held-out perplexity.
- real: a GPT-2-small geometry (124 M parameters) and a Llama of the same geometry (127 M),
  random weights, bf16 autocast, 128-token blocks, global batch 8: single, DDP x2,
  Horovod x2 and FSDP x2, each with full fine-tuning and with LoRA (the Llama: single and
  FSDP x2).

Every row is the train stage run as its own process (`python -m tasks train`, the launcher's
command), so threads and memory are what a run gets. Throughput is global tokens per second
from the median optimizer step (evaluation and checkpoints excluded); the spread is that
of the steps' quartiles (rank 0). Memory per rank: peak resident set, and the parameter plus
optimizer-state bytes the rank holds. Writes bench/results/train_throughput.json and
docs/BENCHMARKS.md.

    .venv/bin/python bench/train_throughput.py [--steps 100] [--real-steps 6]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
from pathlib import Path

from tasks.cli import run_stage
from tasks.config import LifecycleConfig
from tasks.data.source import load_demo
from tasks.runner import localize, stage_argv
from tasks.scaffold import scaffold
from tasks.settings import PROJECT_ROOT, Settings
from tasks.stage import RESULT_FILE, StageContext, write_json
from tasks.train.worker import rank_file

sys.path.insert(0, str(PROJECT_ROOT / "bench"))
from compression import demo_settings  # noqa: E402
from report import update_section  # noqa: E402

DEMO_ROWS = [  # (name, launcher, workers, OMP threads of the stage process)
    ("single, 1 thread", "single", 1, 1),
    ("single, 2 threads", "single", 1, 2),
    ("horovod gloo x2", "horovod", 2, None),
    ("ddp gloo x2", "ddp", 2, None),
    ("fsdp gloo x2", "fsdp", 2, None),
]
REAL = {"gpt2-small": ("gpt2", ("single", "ddp", "horovod", "fsdp")),
        "llama-small": ("llama", ("single", "fsdp"))}
REAL_CONF = {"precision": "bf16", "block_size": 128, "batch_size": 8, "lora_r": 8}


def prepare(settings: Settings, data: Path, cfg: LifecycleConfig, run_id: str) -> dict:
    """The base_model and preprocess results the train stage reads."""
    inputs: dict = {"validate": {"dataset_uri": str(data)}}
    for stage in ("base_model", "preprocess"):
        inputs[stage] = run_stage(StageContext(stage=stage, dag_id="bench", run_id=run_id,
                                               config=cfg, inputs=dict(inputs),
                                               settings=settings))
    return inputs


def run_row(settings: Settings, inputs: dict, cfg: LifecycleConfig, run_id: str,
            threads: int | None) -> dict:
    """One train stage process; its result plus every rank's memory."""
    ctx = StageContext(stage="train", dag_id="bench", run_id=run_id, config=cfg,
                       inputs=inputs, settings=settings)
    payload = write_json(ctx.stage_dir / "payload.json", ctx.to_payload())
    env = os.environ | settings.to_env()
    if threads:
        env |= {"OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    done = subprocess.run(localize(stage_argv("train", str(payload))), env=env,
                          capture_output=True, text=True, check=False)
    if done.returncode:
        raise RuntimeError(f"{run_id} failed:\n{done.stdout[-3000:]}")
    result = json.loads((ctx.stage_dir / RESULT_FILE).read_text())
    ranks = [json.loads(rank_file(ctx.stage_dir, r).read_text())
             for r in range(cfg.world_size)]
    slow, fast = result["step_seconds_quartiles"][::-1]
    tokens = cfg.batch_size * cfg.block_size
    return {"tokens_per_second": tokens / result["step_seconds_median"],
            "tokens_per_second_spread": [tokens / slow, tokens / fast],
            "peak_rss_bytes": max(r["peak_rss_bytes"] for r in ranks),
            "state_bytes": max(r["param_bytes"] + r["optimizer_bytes"] for r in ranks),
            "trainable_parameters": result["trainable_parameters"],
            "parameters": result["parameters"], "val_perplexity": result["val_perplexity"]}


def demo_rows(settings: Settings, data: Path, steps: int) -> list[dict]:
    base = LifecycleConfig(max_steps=steps, eval_every=10 * steps, checkpoint_every=10 * steps)
    inputs = prepare(settings, data, base, "demo")
    rows = []
    for name, launcher, workers, threads in DEMO_ROWS:
        cfg = LifecycleConfig.from_dict(base.to_dict() | {"launcher": launcher,
                                                          "workers": workers})
        row = {"size": "demo", "name": name, "launcher": launcher, "workers": workers,
               "method": "full"} | run_row(settings, inputs, cfg, f"demo-{name}", threads)
        print(row, flush=True)
        rows.append(row)
    return rows


def real_rows(root: Path, settings: Settings, data: Path, steps: int) -> list[dict]:
    rows = []
    for size, (arch, launchers) in REAL.items():
        folder = scaffold(arch, root / size, size="gpt2-small")
        base = LifecycleConfig.from_dict(REAL_CONF | {
            "base_model": str(folder), "max_steps": steps, "eval_every": 10 * steps,
            "checkpoint_every": 10 * steps, "warmup_steps": 1, "launcher": "single"})
        inputs = prepare(settings, data, base, size)
        for method in ("full", "lora"):
            for launcher in launchers:
                cfg = LifecycleConfig.from_dict(base.to_dict() | {
                    "launcher": launcher, "workers": 1 if launcher == "single" else 2,
                    "finetune_method": method})
                row = {"size": size, "name": f"{launcher} x{cfg.world_size}",
                       "launcher": launcher, "workers": cfg.world_size, "method": method
                       } | run_row(settings, inputs, cfg, f"{size}-{method}-{launcher}", None)
                print(row, flush=True)
                rows.append(row)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=100, help="demo rows' steps")
    parser.add_argument("--real-steps", type=int, default=6, help="124 M rows' steps")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        settings = demo_settings(root)
        data = root / "dialogs.parquet"
        load_demo(["english", "chinese"]).to_parquet(data)
        rows = demo_rows(settings, data, args.steps) + real_rows(root, settings, data,
                                                                 args.real_steps)
    out = {"steps": args.steps, "real_steps": args.real_steps, "cpu_count": os.cpu_count(),
           "machine": platform.processor() or platform.machine(), "real_config": REAL_CONF,
           "rows": rows}
    results = PROJECT_ROOT / "bench" / "results"
    results.mkdir(parents=True, exist_ok=True)
    (results / "train_throughput.json").write_text(json.dumps(out, indent=2))
    update_section("train-throughput", render(out))


def _gib(n: float) -> str:
    return f"{n / 2**30:.2f}"


def render(out: dict) -> str:
    demo = [r for r in out["rows"] if r["size"] == "demo"]
    base = demo[0]["tokens_per_second"]
    lines = ["| demo model, fp32 | tokens/s (spread) | vs single 1 thread | state/rank (MiB) "
             "| held-out ppl |", "| --- | ---: | ---: | ---: | ---: |"]
    lines += [f"| {r['name']} | {r['tokens_per_second']:.0f} "
              f"({r['tokens_per_second_spread'][0]:.0f}-{r['tokens_per_second_spread'][1]:.0f})"
              f" | {r['tokens_per_second'] / base:.2f}x | {r['state_bytes'] / 2**20:.1f} | "
              f"{r['val_perplexity']:.1f} |" for r in demo]
    lines += ["", f"{out['steps']} steps, global batch 16 x 64 tokens, {out['cpu_count']} CPU "
              "cores; state = parameters + optimizer state held by one rank.", "",
              "| size | launcher | method | trainable params | tokens/s (spread) | "
              "peak RSS/rank (GiB) | state/rank (GiB) |",
              "| --- | --- | --- | ---: | ---: | ---: | ---: |"]
    real = [r for r in out["rows"] if r["size"] != "demo"]
    lines += [f"| {r['size']} ({r['parameters'] / 1e6:.0f} M) | {r['name']} | {r['method']} | "
              f"{r['trainable_parameters']:,} | {r['tokens_per_second']:.0f} "
              f"({r['tokens_per_second_spread'][0]:.0f}-{r['tokens_per_second_spread'][1]:.0f})"
              f" | {_gib(r['peak_rss_bytes'])} | {_gib(r['state_bytes'])} |" for r in real]
    lines += ["", f"Random weights, bf16 autocast, global batch 8 x 128 tokens, "
              f"{out['real_steps']} steps per row (the median step counts), LoRA r=8 on every "
              "block projection.", "", *_ratios(real)]
    return "\n".join(lines)


def _ratios(real: list[dict]) -> list[str]:
    by = {(r["size"], r["launcher"], r["method"]): r for r in real}
    lines = []
    for size in REAL:
        full, lora = by[(size, "single", "full")], by[(size, "single", "lora")]
        share = lora["trainable_parameters"] / full["parameters"]
        speed = lora["tokens_per_second"] / full["tokens_per_second"]
        lines.append(f"- {size}: LoRA trains {share:.2%} of the weights at {speed:.2f}x the "
                     f"tokens/s, peak {_gib(lora['peak_rss_bytes'])} vs "
                     f"{_gib(full['peak_rss_bytes'])} GiB")
        for method in ("full", "lora"):
            fsdp, ddp = by[(size, "fsdp", method)], by.get((size, "ddp", method))
            if ddp is None:
                continue
            lines.append(f"- {size} {method}: FSDP holds "
                         f"{fsdp['state_bytes'] / ddp['state_bytes']:.2f}x DDP's state per "
                         f"rank, peak RSS {fsdp['peak_rss_bytes'] / ddp['peak_rss_bytes']:.2f}x, "
                         f"at {fsdp['tokens_per_second'] / ddp['tokens_per_second']:.2f}x its "
                         "tokens/s")
    return lines


if __name__ == "__main__":
    main()
