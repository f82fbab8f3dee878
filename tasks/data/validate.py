"""Validate: mask PII, then gate the data with a Great Expectations suite."""

from __future__ import annotations

import logging
import os
from collections import Counter
from pathlib import Path
from typing import Any

import pandas as pd

from tasks.config import LifecycleConfig
from tasks.data.ingest import write_parquet
from tasks.data.pii import PATTERNS, mask_text
from tasks.data.source import COLUMNS, DISALLOWED_CHARS
from tasks.errors import BadInput
from tasks.stage import StageContext, atomic_path, write_json
from tasks.tracking import stage_run

log = logging.getLogger(__name__)

TEXT_COLUMNS = ("prompt", "response")


class ValidationFailed(BadInput):
    """The data failed its expectation suite; the message lists the failed expectations."""


def mask_frame(frame: pd.DataFrame) -> tuple[pd.DataFrame, dict[str, int]]:
    counts: Counter[str] = Counter()
    masked = frame.copy()
    for col in TEXT_COLUMNS:
        masked[col] = [mask_text(v, counts) if isinstance(v, str) else v for v in masked[col]]
    return masked, dict(counts)


def build_expectations(cfg: LifecycleConfig) -> list[Any]:
    import great_expectations.expectations as gxe

    exps: list[Any] = [
        gxe.ExpectTableColumnsToMatchSet(column_set=COLUMNS, exact_match=True),
        gxe.ExpectTableRowCountToBeBetween(min_value=1),
        gxe.ExpectCompoundColumnsToBeUnique(column_list=list(TEXT_COLUMNS)),
        gxe.ExpectColumnValuesToNotBeNull(column="language"),
        gxe.ExpectColumnValuesToBeInSet(column="language", value_set=list(cfg.languages)),
    ]
    for col in TEXT_COLUMNS:
        exps += [
            gxe.ExpectColumnValuesToNotBeNull(column=col),
            gxe.ExpectColumnValueLengthsToBeBetween(
                column=col, min_value=cfg.min_chars, max_value=cfg.max_chars),
            gxe.ExpectColumnValuesToNotMatchRegex(column=col, regex=DISALLOWED_CHARS),
            gxe.ExpectColumnValuesToNotMatchRegexList(
                column=col, regex_list=list(PATTERNS.values())),
        ]
    return exps


def run_suite(frame: pd.DataFrame, cfg: LifecycleConfig) -> dict[str, Any]:
    """Run the suite on an in-memory frame in an ephemeral GX context; returns the result."""
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "False")
    import great_expectations as gx

    context = gx.get_context(mode="ephemeral")
    asset = context.data_sources.add_pandas("aigc").add_dataframe_asset("dialogs")
    batch = asset.add_batch_definition_whole_dataframe("all")
    suite = context.suites.add(gx.ExpectationSuite(name="aigc_dialogs"))
    for expectation in build_expectations(cfg):
        suite.add_expectation(expectation)
    definition = context.validation_definitions.add(
        gx.ValidationDefinition(name="aigc_dialogs", data=batch, suite=suite))
    result = definition.run(batch_parameters={"dataframe": frame},
                            result_format={"result_format": "SUMMARY"})
    return result.to_json_dict()


def describe(r: dict[str, Any]) -> tuple[str, str, str]:
    """(expectation, its arguments, what was found) of one expectation result."""
    cfg = r["expectation_config"]
    kwargs = {k: v for k, v in cfg["kwargs"].items() if k not in ("batch_id", "regex_list")}
    res = r.get("result") or {}
    detail = ""
    if "unexpected_count" in res:
        sample = res.get("partial_unexpected_list") or []
        detail = (f"{res['unexpected_count']} unexpected; e.g. {sample[:3]}"
                  if res["unexpected_count"] else "none unexpected")
    elif "observed_value" in res:
        detail = f"observed {res['observed_value']}"
    return cfg["type"], str(kwargs), detail


def failed_expectations(result: dict[str, Any]) -> list[str]:
    return [" ".join(describe(r)) for r in result["results"] if not r["success"]]


def render_report(result: dict[str, Any], pii: dict[str, int], rows: int) -> str:
    lines = [
        "# Data validation report", "",
        f"- verdict: **{'PASSED' if result['success'] else 'FAILED'}**",
        f"- rows: {rows}",
        f"- PII masked before the check: {sum(pii.values())} {pii or ''}", "",
        "| ok | expectation | arguments | detail |", "| --- | --- | --- | --- |",
    ]
    for r in result["results"]:
        kind, kwargs, detail = describe(r)
        cells = [("yes" if r["success"] else "**NO**"), kind, kwargs, detail]
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    return "\n".join(lines) + "\n"


def _write_text(target: Path, text: str) -> None:
    with atomic_path(target) as tmp:
        tmp.write_text(text, encoding="utf-8")


def run(ctx: StageContext) -> dict[str, Any]:
    frame = pd.read_parquet(ctx.input("ingest")["dataset_uri"])
    masked, pii = mask_frame(frame)
    result = run_suite(masked, ctx.config)
    out = ctx.stage_dir
    write_json(out / "validation_result.json", result)
    _write_text(out / "validation_report.md", render_report(result, pii, len(frame)))
    failed = failed_expectations(result)
    with stage_run(ctx) as run_:
        run_.log_metrics({"pii_masked": sum(pii.values()), "expectations_failed": len(failed)})
        run_.set_tags({"aigc.validation": "passed" if not failed else "failed"}, parent=True)
        run_.log_artifact(out / "validation_report.md")
        run_.log_artifact(out / "validation_result.json")
        if failed:
            # Artifacts are written first so the report survives the failed task.
            raise ValidationFailed(
                f"{len(failed)} expectation(s) failed; report at {out / 'validation_report.md'}:"
                "\n" + "\n".join(f"  - {f}" for f in failed))
    masked_uri = out / "dataset-masked.parquet"
    write_parquet(masked, masked_uri)
    log.info("validation passed: %d rows, %d PII spans masked %s", len(frame), sum(pii.values()),
             pii)
    return {"success": True, "dataset_uri": str(masked_uri), "pii_masked": pii,
            "rows": len(frame), "report_uri": str(out / "validation_report.md"),
            "result_uri": str(out / "validation_result.json")}
