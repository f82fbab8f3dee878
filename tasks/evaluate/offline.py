"""Evaluate: offline A/B of the challenger against the current champion on held-out data."""

from __future__ import annotations

import logging
import random
from typing import Any

import pandas as pd

from tasks.config import LifecycleConfig
from tasks.evaluate.decision import ModelMetrics, Thresholds, metrics_dict, should_promote
from tasks.evaluate.metrics import load_judge, similarity
from tasks.lm.model import load
from tasks.registry.model import model_dir_of
from tasks.registry.register import champion_version
from tasks.stage import StageContext
from tasks.text import distinct_n
from tasks.tracking import stage_run

log = logging.getLogger(__name__)


def score(model_dir, test: pd.DataFrame, cfg: LifecycleConfig, judge) -> ModelMetrics:
    model = load(model_dir)
    pairs = list(test[["prompt", "response"]].itertuples(index=False, name=None))
    # Both versions within this run's training block: the same context for each.
    lik = model.likelihood(pairs, window=cfg.block_size)
    sample = random.Random(cfg.seed).sample(pairs, min(cfg.eval_samples, len(pairs)))
    outputs = model.generate([p for p, _ in sample], cfg.max_new_tokens, cfg.seed)
    return ModelMetrics(
        perplexity=lik.perplexity, char_perplexity=lik.char_perplexity,
        distinct_1=distinct_n(outputs, 1), distinct_2=distinct_n(outputs, 2),
        similarity=similarity(judge, outputs, [r for _, r in sample]),
    )


def thresholds_of(cfg: LifecycleConfig) -> Thresholds:
    return Thresholds(max_perplexity=cfg.max_perplexity, min_distinct_2=cfg.min_distinct_2,
                      min_similarity=cfg.min_similarity, max_regression=cfg.max_regression)


def run(ctx: StageContext) -> dict[str, Any]:
    import mlflow

    cfg = ctx.config
    reg = ctx.input("compress")
    test = pd.read_parquet(ctx.input("preprocess")["splits"]["test"])
    with stage_run(ctx) as run_:
        client = mlflow.MlflowClient()
        judge = load_judge()
        challenger = score(model_dir_of(reg["model_uri"]), test, cfg, judge)
        champ_v = champion_version(client, reg["model_name"])
        champion = None
        if champ_v is not None:
            champion = score(model_dir_of(f"models:/{reg['model_name']}/{champ_v}"), test, cfg,
                             judge)
            run_.log_metrics({f"champion_{k}": v for k, v in metrics_dict(champion).items()})
        decision = should_promote(challenger, champion, thresholds_of(cfg))
        run_.log_metrics({f"challenger_{k}": v for k, v in metrics_dict(challenger).items()},
                         parent=True)
        run_.set_tags({"aigc.eval.decision": "promote" if decision.promote else "keep",
                       "aigc.eval.champion_version": champ_v or "none"}, parent=True)
        for key, value in metrics_dict(challenger).items():
            client.set_model_version_tag(reg["model_name"], reg["version"], f"aigc.eval.{key}",
                                         f"{value:.6g}")
    log.info("challenger v%s %s; champion %s %s -> %s", reg["version"], challenger, champ_v,
             champion, decision)
    return {"model_name": reg["model_name"], "challenger_version": reg["version"],
            "champion_version": champ_v, "challenger": metrics_dict(challenger),
            "champion": metrics_dict(champion) if champion else None,
            "decision": decision.to_dict(), "test_rows": len(test)}
