"""Lineage of one served response: `python -m tasks.lineage <request_id> [--json]`.

request -> model version -> the lifecycle run that built it (training run, dataset hash) ->
the feedback given on it -> the export that carried that feedback -> the lifecycle run that
trained on it -> the successor version(s)."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from tasks.feedback.store import FeedbackStore
from tasks.settings import Settings


def _version(client, name: str, version: str) -> dict[str, Any]:
    mv = client.get_model_version(name, version)
    tags = mv.tags
    runs = client.search_runs(
        [client.get_run(mv.run_id).info.experiment_id],
        filter_string=f"tags.`aigc.dag_run_id` = '{tags.get('aigc.dag_run_id')}' and "
        "tags.`aigc.stage` = 'train'") if mv.run_id else []
    return {"version": version, "mlflow_run_id": mv.run_id,
            "dag_run_id": tags.get("aigc.dag_run_id"), "role": tags.get("aigc.role"),
            "dataset_hash": tags.get("aigc.dataset_hash"),
            "training_run_id": runs[0].info.run_id if runs else None,
            "decision": tags.get("aigc.decision")}


def lineage(request_id: str, settings: Settings) -> dict[str, Any]:
    import mlflow

    store = FeedbackStore(settings.feedback_db)
    try:
        found = store.query("SELECT * FROM requests WHERE request_id = :id", {"id": request_id})
        if not found:
            raise SystemExit(f"request_id: {request_id} is not in {settings.feedback_db}")
        request = found[0]
        feedback = store.query(
            "SELECT f.feedback_id, f.created_at, f.rating, f.thumbs, f.positive, f.export_id, "
            "e.dag_run_id AS export_run, e.consumed_by FROM feedback f LEFT JOIN "
            "feedback_exports e ON e.export_id = f.export_id WHERE f.request_id = :id "
            "ORDER BY f.created_at", {"id": request_id})
    finally:
        store.close()
    mlflow.set_tracking_uri(settings.tracking_uri)
    client = mlflow.MlflowClient()
    name = request["model_name"]
    for row in feedback:
        row["successors"] = [
            _version(client, name, str(v.version)) for v in client.search_model_versions(
                f"name = '{name}' and tags.`aigc.dag_run_id` = '{row['consumed_by']}'")
        ] if row["consumed_by"] else []
    return {"request": {k: request[k] for k in ("request_id", "created_at", "model_name",
                                                "model_version", "route", "status")},
            "served_by": _version(client, name, request["model_version"]),
            "feedback": feedback}


def render(tree: dict[str, Any]) -> str:
    r, v = tree["request"], tree["served_by"]
    lines = [f"request {r['request_id']} ({r['status']}) at {r['created_at']}",
             f"  served by {r['model_name']} version {v['version']} ({r['route']}; role "
             f"{v['role']})",
             f"  built by lifecycle run {v['dag_run_id']}: training run {v['training_run_id']},"
             f" dataset sha256 {v['dataset_hash']}"]
    if not tree["feedback"]:
        lines.append("  no feedback on this response")
    for f in tree["feedback"]:
        signal = f"thumbs {f['thumbs']}" if f["thumbs"] else f"rating {f['rating']}"
        where = (f"exported by {f['export_run']} (export {f['export_id']})" if f["export_id"]
                 else "not exported (yet, or not well rated)")
        lines.append(f"  feedback {f['feedback_id']}: {signal}; {where}")
        if f["consumed_by"]:
            lines.append(f"    trained in lifecycle run {f['consumed_by']} -> " + ", ".join(
                f"version {s['version']} ({s['role']}, {s['decision'] or 'undecided'})"
                for s in f["successors"]))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tasks.lineage", description=__doc__)
    parser.add_argument("request_id")
    parser.add_argument("--json", action="store_true", help="print the tree as JSON")
    args = parser.parse_args(argv)
    tree = lineage(args.request_id, Settings.from_env())
    print(json.dumps(tree, indent=2, default=str) if args.json else render(tree))
    return 0


if __name__ == "__main__":
    sys.exit(main())
