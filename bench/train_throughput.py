"""Training throughput: single (1 and 2 threads), Horovod gloo x2 and DDP x2, side by side.

Same model, data, seed and global batch for every row; each row is the train stage run as
its own process (`python -m tasks train`), timed inside the loop so start-up is excluded.
Writes bench/results/train_throughput.json and the table in docs/BENCHMARKS.md.

    .venv/bin/python bench/train_throughput.py [--steps 100]
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

from tasks.config import LifecycleConfig
from tasks.data.preprocess import run as preprocess
from tasks.data.source import load_demo
from tasks.runner import localize, stage_argv
from tasks.settings import PROJECT_ROOT, Settings
from tasks.stage import RESULT_FILE, StageContext, write_json

sys.path.insert(0, str(PROJECT_ROOT / "bench"))
from report import update_section  # noqa: E402

ROWS = [  # (name, launcher, workers, OMP threads of the stage process)
    ("single, 1 thread", "single", 1, 1),
    ("single, 2 threads", "single", 1, 2),
    ("horovod gloo x2 (1 thread each)", "horovod", 2, None),
    ("ddp gloo x2 (1 thread each)", "ddp", 2, None),
]


def run_row(settings: Settings, prep: dict, launcher: str, workers: int, threads: int | None,
            steps: int) -> dict:
    cfg = LifecycleConfig(launcher=launcher, workers=workers, max_steps=steps,
                          eval_every=10 * steps, checkpoint_every=10 * steps)
    ctx = StageContext(stage="train", dag_id="bench", run_id=f"{launcher}-{workers}-{threads}",
                       config=cfg, inputs={"preprocess": prep}, settings=settings)
    payload = write_json(ctx.stage_dir / "payload.json", ctx.to_payload())
    env = os.environ | settings.to_env()
    if threads:
        env |= {"OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    subprocess.run(localize(stage_argv("train", str(payload))), env=env, check=True,
                   capture_output=True, text=True)
    return json.loads((ctx.stage_dir / RESULT_FILE).read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--steps", type=int, default=100)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        settings = Settings(artifact_root=root, allowed_roots=(tmp,),
                            tracking_uri=f"sqlite:///{root}/mlflow.db",
                            mlflow_artifact_root=str(root / "mlartifacts"), experiment="bench")
        data = root / "dialogs.parquet"
        load_demo(["english", "chinese"]).to_parquet(data)
        prep = preprocess(StageContext(stage="preprocess", dag_id="bench", run_id="prep",
                                       config=LifecycleConfig(), settings=settings,
                                       inputs={"validate": {"dataset_uri": str(data)}}))
        rows = []
        for name, launcher, workers, threads in ROWS:
            result = run_row(settings, prep, launcher, workers, threads, args.steps)
            rows.append({"name": name, "launcher": launcher, "workers": workers,
                         "tokens_per_second": result["tokens_per_second"],
                         "train_seconds": result["train_seconds"],
                         "val_perplexity": result["val_perplexity"]})
            print(f"{name:34s} {result['tokens_per_second']:10.0f} tok/s", flush=True)
    base = rows[0]["tokens_per_second"]
    by_name = {r["launcher"]: r for r in rows}
    out = {
        "steps": args.steps, "global_batch": LifecycleConfig().batch_size,
        "block_size": LifecycleConfig().block_size, "cpu_count": os.cpu_count(),
        "machine": platform.processor() or platform.machine(), "rows": rows,
        "speedup_vs_single_1_thread": {r["name"]: r["tokens_per_second"] / base for r in rows},
        "scaling_efficiency_x2": {k: by_name[k]["tokens_per_second"] / (2 * base)
                                  for k in ("horovod", "ddp")},
        "horovod_over_ddp": by_name["horovod"]["tokens_per_second"]
        / by_name["ddp"]["tokens_per_second"],
    }
    results = PROJECT_ROOT / "bench" / "results"
    results.mkdir(parents=True, exist_ok=True)
    (results / "train_throughput.json").write_text(json.dumps(out, indent=2))
    table = ["| configuration | tokens/s | vs single 1 thread | held-out ppl |",
             "| --- | ---: | ---: | ---: |"]
    table += [f"| {r['name']} | {r['tokens_per_second']:.0f} | "
              f"{r['tokens_per_second'] / base:.2f}x | {r['val_perplexity']:.1f} |" for r in rows]
    table += ["", f"Scaling efficiency at 2 workers (tokens/s / (2 x single 1 thread)): "
              f"Horovod {out['scaling_efficiency_x2']['horovod']:.0%}, "
              f"DDP {out['scaling_efficiency_x2']['ddp']:.0%}. "
              f"Horovod / DDP throughput: {out['horovod_over_ddp']:.2f}. "
              f"{args.steps} steps, global batch {out['global_batch']} x {out['block_size']} "
              f"tokens, default 4-layer model, {out['cpu_count']} CPU cores."]
    update_section("train-throughput", "\n".join(table))


if __name__ == "__main__":
    main()
