"""Validate: gate the (already masked) data with a Great Expectations suite; failures name
the rows by where they are in the source file."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import pandas as pd

from tasks.config import LifecycleConfig
from tasks.data.ingest import TEXT_COLUMNS
from tasks.data.pii import KINDS, pii_kinds
from tasks.data.source import COLUMNS, DISALLOWED_CHARS, ORIGIN
from tasks.errors import BadInput
from tasks.stage import StageContext, atomic_path, write_json
from tasks.text import cut
from tasks.tracking import stage_run

log = logging.getLogger(__name__)
SHOWN_CHARS = 60  # of a value quoted in an error or the report
SHOWN_ROWS = 20  # rows named per expectation (as many as the suite returns)
NO_PII = "expect_column_values_to_contain_no_pii"


class ValidationFailed(BadInput):
    """The data failed its expectation suite; the message lists the failed expectations."""


def build_expectations(cfg: LifecycleConfig) -> list[Any]:
    import great_expectations.expectations as gxe

    exps: list[Any] = [
        gxe.ExpectTableColumnsToMatchSet(column_set=[*COLUMNS, ORIGIN], exact_match=True),
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
        ]
    return exps


def pii_check(frame: pd.DataFrame) -> dict[str, Any]:
    """A result in the suite's shape: no text may hold what masking masks (ingest masked it;
    this catches a snapshot that skipped it). It names kinds and rows, never the values,
    and checks cards and IDs by their check digits, which a regular expression cannot."""
    found = [(origin, col, kinds) for col in TEXT_COLUMNS
             for origin, text in zip(frame[ORIGIN], frame[col], strict=True)
             if isinstance(text, str) and (kinds := pii_kinds(text))]
    return {"success": not found,
            "expectation_config": {"type": NO_PII,
                                   "kwargs": {"columns": list(TEXT_COLUMNS), "kinds": KINDS}},
            "result": {"unexpected_count": len(found),
                       "partial_unexpected_list": [f"{col}: {', '.join(kinds)}"
                                                   for _, col, kinds in found[:SHOWN_ROWS]],
                       "partial_unexpected_index_list": [{ORIGIN: origin} for origin, _, _
                                                         in found[:SHOWN_ROWS]]}}


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
    result = definition.run(batch_parameters={"dataframe": frame}, result_format={
        "result_format": "SUMMARY", "partial_unexpected_count": SHOWN_ROWS,
        "unexpected_index_column_names": [ORIGIN]}).to_json_dict()
    check = pii_check(frame)
    result["results"].append(check)
    result["success"] = result["success"] and check["success"]
    return result


def _cut(value: Any) -> Any:
    """A value as quoted: long texts cut to a readable length, saying how long they were."""
    if isinstance(value, dict):
        return {k: _cut(v) for k, v in value.items()}
    return cut(value, SHOWN_CHARS) if isinstance(value, str) else value


def describe(r: dict[str, Any]) -> tuple[str, str, str]:
    """(expectation, its arguments, what was found) of one expectation result."""
    cfg = r["expectation_config"]
    kwargs = {k: v for k, v in cfg["kwargs"].items() if k not in ("batch_id", "regex_list")}
    res = r.get("result") or {}
    detail = ""
    if "unexpected_count" in res:
        sample = [_cut(v) for v in (res.get("partial_unexpected_list") or [])[:3]]
        rows = [r.get(ORIGIN) for r in res.get("partial_unexpected_index_list") or []]
        more = res["unexpected_count"] - len(rows)
        where = f" at {', '.join(map(str, rows))}{f' and {more} more' if more > 0 else ''}" \
            if rows else ""
        detail = (f"{res['unexpected_count']} unexpected{where}; e.g. {sample}"
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
        f"- rows: {rows} (named below as in the source file: a JSONL line, a CSV row as a "
        "spreadsheet numbers it, a Parquet row)",
        f"- PII masked at ingest: {sum(pii.values())} {pii or ''}", "",
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
    ingested = ctx.input("ingest")
    frame = pd.read_parquet(ingested["dataset_uri"])
    pii = ingested.get("pii_masked", {})
    result = run_suite(frame, ctx.config)
    out = ctx.stage_dir
    write_json(out / "validation_result.json", result)
    _write_text(out / "validation_report.md", render_report(result, pii, len(frame)))
    failed = failed_expectations(result)
    with stage_run(ctx) as run_:
        run_.log_metrics({"expectations_failed": len(failed)})
        run_.set_tags({"aigc.validation": "passed" if not failed else "failed"}, parent=True)
        run_.log_artifact(out / "validation_report.md")
        run_.log_artifact(out / "validation_result.json")
        if failed:
            # Artifacts are written first so the report survives the failed task.
            raise ValidationFailed(
                f"{len(failed)} expectation(s) failed; report at {out / 'validation_report.md'}:"
                "\n" + "\n".join(f"  - {f}" for f in failed))
    log.info("validation passed: %d rows (%d PII spans masked at ingest)", len(frame),
             sum(pii.values()))
    return {"success": True, "dataset_uri": ingested["dataset_uri"], "pii_masked": pii,
            "rows": len(frame), "report_uri": str(out / "validation_report.md"),
            "result_uri": str(out / "validation_result.json")}
