"""Promote: move `champion` to the evaluated challenger when the offline decision and the
canary (when one ran) both say so."""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from tasks.registry.register import CHAMPION, add_decision
from tasks.stage import StageContext
from tasks.tracking import stage_run

log = logging.getLogger(__name__)


def final_decision(evaluated: dict[str, Any], canary: dict[str, Any] | None,
                   ) -> tuple[bool, str]:
    """(promote, reason): the offline decision, overruled by a canary that rolled back."""
    promote = evaluated["decision"]["promote"]
    reason = "; ".join(evaluated["decision"]["reasons"])
    if canary is None or not canary["ran"]:
        note = canary["reason"] if canary else "no canary stage"
        return promote, f"{reason}; canary: {note}"
    passed = canary["decision"] == "promote"
    return promote and passed, f"{reason}; canary: {canary['decision']} after " \
        f"{canary['steps']} analyses ({canary['history'][-1]})"


def retire_canary(canary: dict[str, Any] | None) -> Callable[[str], None]:
    """What to do once the alias moved: a long-running server follows it now (the
    challenger, now equal to the champion, has no separate weight); a KServe service makes
    the canary revision the rolled-out one. Settings are checked here, before anything
    moves: a missing key must not leave a half-made promotion."""
    target = (canary or {}).get("target") or {}
    if target.get("kind") == "kserve":
        from tasks.rollout.stage import kserve_target

        return kserve_target().promote
    if target.get("url"):
        from tasks.rollout.controller import ServerTarget
        from tasks.rollout.stage import server_admin_key

        server = ServerTarget(target["url"], server_admin_key(target["url"]))

        def follow(version: str) -> None:
            state = server.reload()
            log.info("server now serves champion %s (expected %s)", state["champion"], version)
        return follow
    return lambda version: None


def run(ctx: StageContext) -> dict[str, Any]:
    import mlflow

    ev = ctx.input("evaluate")
    canary = ctx.inputs.get("canary")
    name, version_ = ev["model_name"], ev["challenger_version"]
    promote, reason = final_decision(ev, canary)
    retire = retire_canary(canary)
    with stage_run(ctx) as run_:
        client = mlflow.MlflowClient()
        verdict = "promoted" if promote else "rejected"
        # The version evaluated, not whatever `challenger` points at now: another run may
        # have moved that alias since. The decision (and the canary record, written by the
        # canary stage) land before the alias moves: whoever finds the alias finds them.
        client.set_model_version_tag(name, version_, "aigc.decision", verdict)
        client.set_model_version_tag(name, version_, "aigc.decision_reason", reason[:4900])
        add_decision(client, name, version_, f"{verdict} — {reason}")
        if promote:
            client.set_registered_model_alias(name, CHAMPION, version_)
            client.set_model_version_tag(name, version_, "aigc.promoted_at",
                                         datetime.now(UTC).isoformat())
        run_.set_tags({"aigc.decision": verdict, "aigc.champion_version":
                       version_ if promote else (ev["champion_version"] or "none")},
                      parent=True)
    if promote:
        retire(version_)
    champion = version_ if promote else ev["champion_version"]
    log.info("%s version %s: %s (champion is now %s)", verdict, version_, reason, champion)
    return {"model_name": name, "version": version_, "decision": verdict, "reason": reason,
            "champion_version": champion}
