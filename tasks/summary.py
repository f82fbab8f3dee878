"""Print what one lifecycle run produced, read from its stage results.

Usage: `airflow dags list-runs aigc_lifecycle -o json | python -m tasks.summary`
(the newest run is summarised; exit 1 unless it succeeded).
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tasks.compress.gate import Speed
from tasks.settings import Settings
from tasks.stage import RESULT_FILE, safe_name

DAG_ID = "aigc_lifecycle"
STAGES = ("base_model", "ingest", "validate", "preprocess", "train", "register", "compress",
          "evaluate", "canary", "promote")


def parse_runs(cli_output: str) -> list[dict[str, Any]]:
    """The JSON list in `airflow dags list-runs -o json` output, past any warnings it prints."""
    for line in reversed(cli_output.splitlines()):
        if line.startswith("[{") or line.strip() == "[]":
            return json.loads(line)
    raise SystemExit(f"no run listing in the output:\n{cli_output[-2000:]}")


def newest_run(runs: list[dict[str, Any]]) -> dict[str, Any]:
    if not runs:
        raise SystemExit(f"no runs of {DAG_ID} found")
    return max(runs, key=lambda r: r.get("start_date") or r.get("logical_date") or "")


def stage_results(run_dir: Path) -> dict[str, dict[str, Any]]:
    return {p.parent.name: json.loads(p.read_text()) for p in run_dir.glob(f"*/{RESULT_FILE}")}


def _candidate_line(c: dict[str, Any]) -> str:
    if "error" in c:
        return f"  {c['method']}: error {c['error']}"
    v, m = c["verdict"], c["measurement"]
    return (f"  {c['method']}: version {c['version']} {'pass' if v['passed'] else 'fail'}, "
            f"size {v['size_ratio']:.3f}x ({m['size_bytes']:,} B), speed-up {speed_of(v)}, "
            f"quality {v['quality_loss']:+.2%}")


def speed_of(verdict: dict[str, Any]) -> Speed:
    """A gate verdict's speed-up as written in a result file."""
    return Speed(verdict["speedup"], verdict["speed_spread"])


def base_line(base: dict[str, Any]) -> str:
    """What the run fine-tuned (or that it trained from scratch), in one line."""
    if base["kind"] == "scratch":
        return f"base model: none, a GPT-2 trained from scratch (registers as {base['model_name']})"
    return (f"base model: {base['architecture']} ({base['parameters']:,} parameters, context "
            f"{base['context']}) from {base['source']} ({base['kind']}); chat template: "
            f"{base['chat_template']}; registers as {base['model_name']}")


def _ingest(ing: dict[str, Any]) -> list[str]:
    return [f"dataset: {ing['rows']:,} rows from {ing['source_uri']}, "
            f"sha256 {ing['dataset_hash'][:16]}…"]


def _validate(val: dict[str, Any]) -> list[str]:
    return [f"validation: {'passed' if val['success'] else 'FAILED'}, PII masked "
            f"{val['pii_masked'] or 0}; report {val['report_uri']}"]


def _preprocess(prep: dict[str, Any]) -> list[str]:
    rows = prep["rows"]
    return [f"preprocess: {rows['train']:,} / {rows['validation']:,} / {rows['test']:,} pairs "
            f"for train / validation / test; vocabulary {prep['vocab_size']:,}"]


def _train(tr: dict[str, Any]) -> list[str]:
    method = ("" if tr["finetune_method"] == "full" else
              f" (LoRA: {tr['trainable_parameters']:,} trained)")
    return [f"train: {tr['parameters']:,} parameters{method}, {tr['steps']} steps on "
            f"{tr['workers']} {tr['launcher']} worker(s); train loss {tr['train_loss']:.3f}; "
            f"held-out loss {tr['val_loss']:.3f}, perplexity {tr['val_perplexity']:.1f} "
            f"(untrained {tr['untrained_val_perplexity']:.1f})"]


def _register(reg: dict[str, Any]) -> list[str]:
    return [f"registered: {reg['model_name']} version {reg['version']} (alias {reg['alias']})"]


def _compress(co: dict[str, Any]) -> list[str]:
    return [f"compress: challenger is version {co['version']} ({co['method']}); {co['reason']}",
            *(_candidate_line(c) for c in co["candidates"])]


def _evaluate(ev: dict[str, Any]) -> list[str]:
    c = ev["challenger"]
    verdict = "promote" if ev["decision"]["promote"] else "keep the champion"
    return [f"evaluate: {verdict}; test perplexity {c['perplexity']:.1f}, distinct-2 "
            f"{c['distinct_2']:.3f}, similarity {c['similarity']:.3f}; champion "
            f"{ev['champion_version'] or 'none'}"]


def _canary(ca: dict[str, Any]) -> list[str]:
    if not ca["ran"]:
        return [f"canary: skipped, {ca['reason']}"]
    return [f"canary: {ca['decision']} version {ca['version']} after {ca['steps']} analyses",
            *(f"  {h}" for h in ca["history"])]


def _promote(pr: dict[str, Any]) -> list[str]:
    return [f"promote: {pr['decision']} version {pr['version']}; champion is "
            f"{pr['champion_version'] or 'none'}", f"  why: {pr['reason']}"]


def _report(rp: dict[str, Any]) -> list[str]:
    return [f"report: {rp['report_uri']} ({len(rp['charts'])} charts; in MLflow: {rp['url']})"]


# What each stage's result says, most important first: the summary prints every line, the
# progress view of `make run` the first.
LINES: dict[str, Callable[[dict[str, Any]], list[str]]] = {
    "base_model": lambda base: [base_line(base)], "ingest": _ingest, "validate": _validate,
    "preprocess": _preprocess, "train": _train, "register": _register,
    "compress": _compress, "evaluate": _evaluate, "canary": _canary, "promote": _promote,
    "report": _report,
}


def render(run: dict[str, Any], results: dict[str, dict[str, Any]], run_dir: Path) -> str:
    lines = [f"run {run['run_id']}: {run['state']}", f"artifacts: {run_dir}"]
    for stage, describe in LINES.items():
        if stage in results:
            lines += describe(results[stage])
        elif stage == "validate" and (run_dir / "validate" / "validation_report.md").exists():
            lines.append("validation: FAILED; report "
                         f"{run_dir / 'validate' / 'validation_report.md'}")
    missing = [s for s in STAGES if s not in results]
    if missing:
        lines.append(f"not completed: {', '.join(missing)}")
    return "\n".join(lines)


def main() -> int:
    run = newest_run(parse_runs(sys.stdin.read()))
    run_dir = Settings.from_env().artifact_root / DAG_ID / safe_name(run["run_id"])
    print(render(run, stage_results(run_dir), run_dir))
    return 0 if run["state"] == "success" else 1


if __name__ == "__main__":
    sys.exit(main())
