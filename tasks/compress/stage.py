"""Compress: build each configured candidate from the fresh challenger, measure it against
the uncompressed model, register every candidate with its verdict, and move `challenger` to
the best one that passes the gate (or keep the uncompressed model and say why)."""

from __future__ import annotations

import functools
import json
import logging
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd

from tasks.compress.gate import (
    CompressionBudget,
    GateVerdict,
    Measurement,
    choose,
    passes_compression_gate,
)
from tasks.compress.measure import measure
from tasks.compress.methods import METHODS, Workbench
from tasks.config import LifecycleConfig
from tasks.errors import BadInput
from tasks.lm.artifact import MANIFEST, manifest
from tasks.lm.model import TextModel, load
from tasks.registry.model import model_dir_of
from tasks.registry.register import CHALLENGER, champion_version, lineage_of, register
from tasks.stage import StageContext, atomic_path, write_json
from tasks.tracking import StageRun, stage_run

log = logging.getLogger(__name__)
# Packages a registered artifact needs at load time, beyond torch and transformers.
FORMAT_REQUIREMENTS = {"onnx": ("onnxruntime",), "pt2": (), "hf": (), "torch": ()}


def budget_of(cfg: LifecycleConfig) -> CompressionBudget:
    return CompressionBudget(max_quality_loss=cfg.compress_max_quality_loss,
                             min_speedup=cfg.compress_min_speedup,
                             max_size_ratio=cfg.compress_max_size_ratio)


def _cached(path: Path, compute: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """A retried task reuses what an earlier attempt measured: the registered tags and the
    decision stay consistent with one another."""
    if path.is_file():
        return json.loads(path.read_text())
    value = compute()
    write_json(path, value)
    return value


def build(wb: Workbench, method: str, root: Path) -> tuple[Path, dict[str, Any]]:
    """Build one candidate folder atomically; a complete one from an earlier attempt is kept."""
    target = root / method
    report_path = root / f"{method}.report.json"
    if not ((target / MANIFEST).is_file() and report_path.is_file()):
        report_path.unlink(missing_ok=True)
        with atomic_path(target) as tmp:
            tmp.mkdir()
            report = METHODS[method](wb, tmp)
        write_json(report_path, report)
    return target, json.loads(report_path.read_text())


def _requirements(method: str, model_dir: Path) -> tuple[str, ...]:
    extra = FORMAT_REQUIREMENTS[manifest(model_dir)["format"]]
    # INC's weight-only layers are INC classes: unpickling them imports the package.
    return (*extra, "neural-compressor-pt") if method.startswith("inc_woq") else extra


def _tags(method: str, base_version: str, m: Measurement, verdict: GateVerdict,
          report: dict[str, Any], lineage: dict[str, str]) -> dict[str, Any]:
    return {
        "aigc.compress.method": method, "aigc.compress.base_version": base_version,
        "aigc.compress.size_bytes": m.size_bytes,
        "aigc.compress.latency_ms": f"{m.latency_ms:.4g}",
        "aigc.compress.perplexity": f"{m.perplexity:.6g}",
        "aigc.compress.char_perplexity": f"{m.char_perplexity:.6g}",
        "aigc.compress.quality_loss": f"{verdict.quality_loss:.4g}",
        "aigc.compress.speedup": f"{verdict.speedup:.4g}",
        "aigc.compress.speedup_spread": f"{verdict.speed_spread:.4g}",
        "aigc.compress.speed": ("measured" if verdict.speed_conclusive else "inconclusive"),
        "aigc.compress.size_ratio": f"{verdict.size_ratio:.4g}",
        "aigc.compress.verdict": "pass" if verdict.passed else "fail",
        "aigc.compress.reasons": "; ".join(verdict.reasons)[:4900],
        "aigc.compress.report": json.dumps(report)[:4900], **lineage,
    }


def _teacher(ctx: StageContext, client, name: str) -> dict[str, Any]:
    """Workbench fields naming distillation's teacher: the champion when asked and present."""
    if "distill" not in ctx.config.compress_methods or ctx.config.distill_teacher != "champion":
        return {}
    version_ = champion_version(client, name)
    if version_ is None:
        log.info("no champion yet: the challenger teaches the student")
        return {"teacher": "challenger (no champion yet)"}
    return {"teacher_dir": model_dir_of(f"models:/{name}/{version_}"),
            "teacher": f"champion version {version_}"}


def _outcome(cfg: LifecycleConfig, candidates: list[dict[str, Any]]) -> tuple[str | None, str]:
    scored = [(c["method"], Measurement(**c["measurement"]), GateVerdict.from_dict(c["verdict"]))
              for c in candidates if "verdict" in c]
    best = choose(scored, cfg.compress_policy)
    if best is not None:
        return best, f"{best} is the {cfg.compress_policy} candidate that passed the gate"
    if passed := [name for name, _, v in scored if v.passed]:
        return None, (f"{', '.join(passed)} passed the gate, but none is measurably faster "
                      "than the uncompressed model (each speed-up lies within the spread of "
                      "its rounds), so the fastest policy keeps the uncompressed model")
    why = "; ".join(f"{c['method']}: " + (c["error"] if "error" in c else
                                         ", ".join(r for r in c["verdict"]["reasons"]
                                                   if r.startswith("FAIL")))
                    for c in candidates)
    return None, f"no candidate passed the gate, keeping the uncompressed model ({why})"


def _candidate(ctx: StageContext, wb: Workbench, method: str, root: Path,
               pairs: list[tuple[str, str]], baseline: Measurement, lineage: dict[str, str],
               name: str, base_version: str, base_model: Callable[[], TextModel],
               ) -> dict[str, Any]:
    """Build, measure, gate and register one method. A method that crashes is recorded as
    failed (the others still count); one refused for bad input fails the task."""
    try:
        model_dir, report = build(wb, method, root)
    except BadInput:
        raise
    except Exception as exc:  # noqa: BLE001 - recorded with its traceback, then reported
        log.error("%s failed:\n%s", method, traceback.format_exc())
        return {"method": method, "error": f"{type(exc).__name__}: {exc}"[:500]}
    m = Measurement(**_cached(root / f"{method}.measurement.json", lambda: measure(
        model_dir, pairs, ctx.config.latency_batch, ctx.config.block_size,
        baseline=base_model()).to_dict()))
    verdict = passes_compression_gate(baseline, m, budget_of(ctx.config))
    version_ = register(ctx, name, str(model_dir), f"compressed:{method}",
                        _tags(method, base_version, m, verdict, report, lineage),
                        _requirements(method, model_dir))
    log.info("%s -> version %s: %s", method, version_, "; ".join(verdict.reasons))
    return {"method": method, "version": version_, "measurement": m.to_dict(),
            "verdict": verdict.to_dict(), "report": report}


def run(ctx: StageContext) -> dict[str, Any]:
    cfg = ctx.config
    reg = ctx.input("register")
    name, base_version = reg["model_name"], reg["version"]
    passthrough = {"model_name": name, "version": base_version, "model_uri": reg["model_uri"],
                   "alias": CHALLENGER, "baseline_version": base_version, "method": "none"}
    with stage_run(ctx) as run_:
        if not cfg.compress_methods:
            reason = "compression off (no methods configured)"
            run_.set_tags({"aigc.compress.selected": "none", "aigc.compress.outcome": reason},
                          parent=True)
            return passthrough | {"candidates": [], "reason": reason}
        outcome = _compress(ctx, run_, name, base_version, reg["model_uri"])
    log.info("challenger is version %s: %s", outcome["version"], outcome["reason"])
    return passthrough | outcome


def _compress(ctx: StageContext, run_: StageRun, name: str, base_version: str,
              base_uri: str) -> dict[str, Any]:
    import mlflow

    cfg = ctx.config
    splits = ctx.input("preprocess")["splits"]
    held_out = pd.read_parquet(splits["validation"])
    pairs = list(held_out[["prompt", "response"]].itertuples(index=False, name=None))
    root = ctx.stage_dir / "candidates"
    client = mlflow.MlflowClient()
    base_dir = model_dir_of(base_uri)
    lineage = lineage_of(client.get_model_version(name, base_version).tags)
    wb = Workbench(cfg, base_dir, pd.read_parquet(splits["train"]),
                   **_teacher(ctx, client, name))
    baseline = Measurement(**_cached(root / "baseline.measurement.json", lambda: measure(
        base_dir, pairs, cfg.latency_batch, cfg.block_size).to_dict()))
    # Loaded once, and only if a candidate still needs timing against it.
    base_model = functools.cache(lambda: load(base_dir))
    candidates = [_candidate(ctx, wb, method, root, pairs, baseline, lineage, name,
                             base_version, base_model)
                  for method in cfg.compress_methods]
    best, reason = _outcome(cfg, candidates)
    chosen = next((c for c in candidates if c["method"] == best), None)
    version_ = chosen["version"] if chosen else base_version
    client.set_registered_model_alias(name, CHALLENGER, version_)
    client.set_model_version_tag(name, base_version, "aigc.compress.outcome", reason[:4900])
    run_.log_metrics({f"{c['method']}.{k}": v for c in candidates if "verdict" in c
                      for k, v in (c["measurement"] | {
                          "speedup": c["verdict"]["speedup"],
                          "size_ratio": c["verdict"]["size_ratio"],
                          "quality_loss": c["verdict"]["quality_loss"]}).items()
                      if isinstance(v, int | float)})
    run_.set_tags({"aigc.compress.selected": best or "none",
                   "aigc.compress.outcome": reason[:4900]}, parent=True)
    run_.log_artifact(write_json(ctx.stage_dir / "compression.json",
                                 {"baseline": baseline.to_dict(), "candidates": candidates,
                                  "selected": best, "reason": reason}))
    return {"version": version_, "model_uri": f"models:/{name}/{version_}",
            "method": best or "none", "baseline": baseline.to_dict(),
            "candidates": candidates, "reason": reason}
