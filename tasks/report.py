"""Report: one self-contained HTML page per lifecycle run (charts embedded as PNG data URIs,
so it renders the same from disk, from the task's link and in MLflow's artifact viewer) —
base model, data, validation, loss curve, compression candidates, offline A/B, canary
timeline, decision — logged to the run's MLflow parent. It runs after every other stage,
failed ones included, and shows whatever exists."""

from __future__ import annotations

import base64
import html
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from tasks.stage import StageContext, atomic_path
from tasks.summary import STAGES, base_line, speed_of, stage_results
from tasks.tracking import TAG_RUN_ID, TAG_STAGE, run_url, stage_run

log = logging.getLogger(__name__)
Draw = Callable[[Any], None]  # draws on a matplotlib Figure
TRAIN_FIELDS = ("steps", "launcher", "workers", "finetune_method", "trainable_parameters",
                "train_loss", "val_loss", "val_perplexity")


CSS = ("body{font-family:sans-serif;max-width:1100px;margin:auto;padding:0 12px}"
       "table{border-collapse:collapse;margin:6px 0}"
       "td,th{border:1px solid #ccc;padding:2px 6px;font-size:13px;vertical-align:top}"
       "td{max-width:520px;overflow-wrap:anywhere}td:first-child{white-space:nowrap}"
       "img{max-width:100%}"
       ".missing,.fail{color:#c44e52}.ok{color:#55a868}")


@dataclass(frozen=True)
class Chart:
    """One chart, drawn into the page as an embedded PNG."""

    name: str
    png: bytes

    @property
    def data_uri(self) -> str:
        return "data:image/png;base64," + base64.b64encode(self.png).decode()


def _plot(name: str, draw: Draw, size: tuple[float, float] = (10, 3.6)) -> Chart:
    import io

    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    fig = Figure(figsize=size)
    draw(fig)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100, bbox_inches="tight")
    return Chart(name, buffer.getvalue())


def data_chart(frame: pd.DataFrame) -> Draw:
    def draw(fig: Any) -> None:
        counts = frame["language"].fillna("unknown").value_counts()
        ax1, ax2 = fig.subplots(1, 2)
        ax1.bar(counts.index.astype(str), counts.values, color="#4c72b0")
        ax1.set_title("rows per language")
        for col, color in (("prompt", "#4c72b0"), ("response", "#dd8452")):
            ax2.hist(frame[col].fillna("").str.len(), bins=40, alpha=0.6, label=col,
                     color=color)
        ax2.set_title("length in characters")
        ax2.legend()
    return draw


def loss_chart(history: dict[str, list[tuple[int, float]]]) -> Draw:
    def draw(fig: Any) -> None:
        ax = fig.subplots()
        for key, points in history.items():
            ax.plot([s for s, _ in points], [v for _, v in points], marker=".", label=key)
        ax.set_xlabel("step")
        ax.set_ylabel("loss")
        ax.set_title("training loss")
        ax.legend()
    return draw


def compression_chart(candidates: list[dict[str, Any]]) -> Draw:
    def draw(fig: Any) -> None:
        ax = fig.subplots()
        for c in candidates:
            v = c["verdict"]
            ax.scatter(v["size_ratio"], v["speedup"], s=80,
                       color="#55a868" if v["passed"] else "#c44e52")
            ax.annotate(f"{c['method']} ({v['quality_loss']:+.1%})",
                        (v["size_ratio"], v["speedup"]), fontsize=8,
                        xytext=(4, 4), textcoords="offset points")
        ax.axhline(1.0, color="grey", lw=0.5)
        ax.axvline(1.0, color="grey", lw=0.5)
        ax.set_xlabel("size vs uncompressed")
        ax.set_ylabel("speed-up")
        ax.set_title("compression candidates (green: passed the gate)")
    return draw


def ab_chart(evaluated: dict[str, Any]) -> Draw:
    def draw(fig: Any) -> None:
        keys = ("char_perplexity", "distinct_2", "similarity")
        axes = fig.subplots(1, len(keys))
        sides = [("challenger", evaluated["challenger"])]
        if evaluated.get("champion"):
            sides.insert(0, ("champion", evaluated["champion"]))
        for ax, key in zip(axes, keys, strict=True):
            ax.bar([n for n, _ in sides], [m[key] for _, m in sides],
                   color=["#4c72b0", "#dd8452"][:len(sides)])
            ax.set_title(key)
    return draw


def canary_chart(record: dict[str, Any]) -> Draw:
    def draw(fig: Any) -> None:
        steps = record["steps"]
        x = list(range(1, len(steps) + 1))
        ax1, ax2, ax3 = fig.subplots(1, 3)
        ax1.step(x, [s["weight"] for s in steps], where="mid", marker="o")
        ax1.set_ylim(0, 105)
        ax1.set_title("challenger weight % per analysis")
        for side, color in (("champion", "#4c72b0"), ("challenger", "#dd8452")):
            obs = [s[side] for s in steps]
            ax2.plot(x, [o["errors"] / o["requests"] if o["requests"] else 0 for o in obs],
                     marker="o", label=side, color=color)
            ax3.plot(x, [o["p99_ms"] for o in obs], marker="o", label=side, color=color)
        ax2.set_title("error rate")
        ax3.set_title("P99 ms")
        ax3.legend()
        fig.suptitle(f"canary: {record['decision']}")
    return draw


def _loss_history(ctx: StageContext) -> dict[str, list[tuple[int, float]]]:
    import mlflow

    from tasks.tracking import configure

    experiment = configure(ctx.settings)
    client = mlflow.MlflowClient()
    runs = client.search_runs([experiment], filter_string=(
        f"tags.`{TAG_RUN_ID}` = '{ctx.run_id}' and tags.`{TAG_STAGE}` = 'train'"))
    if not runs:
        return {}
    history = {key: sorted((m.step, m.value) for m in client.get_metric_history(
        runs[0].info.run_id, key)) for key in ("train_loss", "val_loss")}
    return {k: v for k, v in history.items() if v}


def readable(value: Any) -> str:
    """A number as a person reads it: four significant digits, thousands separated."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return str(value)
    if isinstance(value, int):
        return f"{value:,}"
    return f"{value:,.0f}" if abs(value) >= 1000 else f"{value:.4g}"


def _table(rows: list[dict[str, Any]], classes: list[str] | None = None) -> str:
    """An HTML table of rows (dicts with the same keys), numbers made readable; `classes`
    marks rows (e.g. failed ones)."""
    if not rows:
        return ""
    head = "".join(f"<th>{html.escape(str(k))}</th>" for k in rows[0])
    body = "".join(
        (f'<tr class="{cls}">' if cls else "<tr>")
        + "".join(f"<td>{html.escape(readable(v))}</td>" for v in r.values()) + "</tr>"
        for r, cls in zip(rows, classes or [""] * len(rows), strict=True))
    return f"<table><tr>{head}</tr>{body}</table>"


def validation_section(run_dir: Path) -> str | None:
    """The expectation results as a table, failed ones first; None before validation ran."""
    from tasks.data.validate import describe

    path = run_dir / "validate" / "validation_result.json"
    if not path.is_file():
        return None
    result = json.loads(path.read_text())
    ordered = sorted(result["results"], key=lambda r: r["success"])
    rows = [dict(zip(("ok", "expectation", "arguments", "detail"),
                     ("yes" if r["success"] else "NO", *describe(r)), strict=True))
            for r in ordered]
    failed = sum(not r["success"] for r in ordered)
    verdict = (f"<p class=fail><b>failed</b>: {failed} of {len(rows)} expectations</p>"
               if failed else f"<p class=ok>passed: all {len(rows)} expectations</p>")
    return verdict + _table(rows, ["fail" if not r["success"] else "" for r in ordered])


Part = tuple[str, str, Chart | None]  # title, HTML body, chart


def _compression_rows(candidates: list[dict[str, Any]]) -> list[dict[str, Any]]:
    rows = []
    for c in candidates:
        v = c["verdict"]
        rows.append({"method": c["method"], "version": c.get("version"),
                     "gate": "pass" if v["passed"] else "fail",
                     "size": f"{v['size_ratio']:.3f}x",
                     "speed-up": str(speed_of(v)),
                     "quality": f"{v['quality_loss']:+.2%}"})
    return rows


def sections(ctx: StageContext, results: dict[str, dict[str, Any]]) -> list[Part]:
    """(title, html body, chart or None) for each part whose stage left results."""
    parts: list[Part] = []
    if base := results.get("base_model"):
        parts.append(("Base model", f"<p>{html.escape(base_line(base))}</p>", None))
    if ing := results.get("ingest"):
        frame = pd.read_parquet(ing["dataset_uri"])
        parts.append(("Data", f"<p>{ing['rows']:,} rows from {html.escape(ing['source_uri'])}, "
                      f"sha256 {ing['dataset_hash'][:16]}…; feedback rows "
                      f"{ing.get('feedback', {}).get('rows', 0)}</p>",
                      _plot("data", data_chart(frame))))
    if (table := validation_section(ctx.run_dir)) is not None:
        masked = (results.get("validate") or {}).get("pii_masked")
        note = f"<p>PII masked before the check: {html.escape(str(masked))}</p>" if masked else ""
        parts.append(("Validation", note + table, None))
    if history := _loss_history(ctx):
        train = results.get("train", {})
        summary = {k: train[k] for k in TRAIN_FIELDS if k in train}
        parts.append(("Training", _table([summary] if summary else []),
                      _plot("loss", loss_chart(history))))
    if (co := results.get("compress")) and co.get("candidates"):
        scored = [c for c in co["candidates"] if "verdict" in c]
        parts.append(("Compression", f"<p>challenger: {html.escape(str(co['method']))}; "
                      f"{html.escape(co['reason'])}</p>" + _table(_compression_rows(scored)),
                      _plot("compression", compression_chart(scored))))
    if ev := results.get("evaluate"):
        parts.append(("Offline A/B", "<p>" + html.escape("; ".join(ev["decision"]["reasons"]))
                      + "</p>", _plot("ab", ab_chart(ev))))
    canary_file = ctx.run_dir / "canary" / "canary.json"
    if canary_file.exists():
        record = json.loads(canary_file.read_text())
        parts.append(("Canary", _table([{"analysis": i + 1, "weight": s["weight"], "action":
                                         s["action"], "why": "; ".join(s["reasons"])}
                                        for i, s in enumerate(record["steps"])]),
                      _plot("canary", canary_chart(record))))
    elif ca := results.get("canary"):
        parts.append(("Canary", f"<p>skipped: {html.escape(ca.get('reason', ''))}</p>", None))
    if pr := results.get("promote"):
        parts.append(("Decision", f"<p><b>{pr['decision']}</b> version {pr['version']}: "
                      f"{html.escape(pr['reason'])}</p>", None))
    return parts


def render_html(ctx: StageContext, parts: list[Part], missing: list[str]) -> str:
    body = "".join(f"<h2>{t}</h2>{b}"
                   + (f'<img src="{c.data_uri}" alt="{c.name} chart">' if c else "")
                   for t, b, c in parts)
    note = f"<p class=missing>not completed: {', '.join(missing)}</p>" if missing else ""
    return (f"<!doctype html><meta charset=utf-8><title>aigc_lifecycle "
            f"{html.escape(ctx.run_id)}</title><style>{CSS}</style>"
            f"<h1>Run {html.escape(ctx.run_id)}</h1>{note}{body}")


def run(ctx: StageContext) -> dict[str, Any]:
    import mlflow

    results = stage_results(ctx.run_dir)
    parts = sections(ctx, results)
    missing = [s for s in STAGES if s not in results]
    target = ctx.stage_dir / "report.html"
    with atomic_path(target) as tmp:
        tmp.write_text(render_html(ctx, parts, missing))
    charts = [c.name for _, _, c in parts if c]
    with stage_run(ctx) as run_:
        client = mlflow.MlflowClient()
        client.log_artifact(run_.parent_id, str(target), "report")
        experiment = client.get_run(run_.parent_id).info.experiment_id
        run_.set_tags({"aigc.run_state": "failed" if missing else "success"}, parent=True)
    # Last, after every stage reopened and closed it: the DAG run's own outcome (a stage
    # that failed before it logged anything never marked it).
    client.set_terminated(run_.parent_id, status="FAILED" if missing else "FINISHED")
    url = run_url(experiment, run_.parent_id, "report/report.html")
    log.info("report: %s (%d charts embedded); in MLflow: %s", target, len(charts), url)
    return {"report_uri": str(target), "charts": charts, "url": url,
            "mlflow_run_id": run_.parent_id, "missing": missing}
