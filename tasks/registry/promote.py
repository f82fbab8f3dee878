"""Promote: move `champion` to the evaluated challenger when the decision says so."""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import Any

from tasks.registry.register import CHAMPION
from tasks.stage import StageContext
from tasks.tracking import stage_run

log = logging.getLogger(__name__)


def run(ctx: StageContext) -> dict[str, Any]:
    import mlflow

    ev = ctx.input("evaluate")
    name, version_ = ev["model_name"], ev["challenger_version"]
    decision = ev["decision"]
    reason = "; ".join(decision["reasons"])
    with stage_run(ctx) as run_:
        client = mlflow.MlflowClient()
        verdict = "promoted" if decision["promote"] else "rejected"
        # The version evaluated, not whatever `challenger` points at now: another run may
        # have moved that alias since.
        client.set_model_version_tag(name, version_, "aigc.decision", verdict)
        client.set_model_version_tag(name, version_, "aigc.decision_reason", reason[:4900])
        if decision["promote"]:
            client.set_registered_model_alias(name, CHAMPION, version_)
            client.set_model_version_tag(name, version_, "aigc.promoted_at",
                                         datetime.now(UTC).isoformat())
        run_.set_tags({"aigc.decision": verdict, "aigc.champion_version":
                       version_ if decision["promote"] else (ev["champion_version"] or "none")},
                      parent=True)
    champion = version_ if decision["promote"] else ev["champion_version"]
    log.info("%s version %s: %s (champion is now %s)", verdict, version_, reason, champion)
    return {"model_name": name, "version": version_, "decision": verdict, "reason": reason,
            "champion_version": champion}
