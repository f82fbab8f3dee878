"""Lineage of a served response through versions, runs, feedback and exports."""

from __future__ import annotations

from tasks.feedback.store import FeedbackStore
from tasks.lineage import lineage, render
from tests.feedback.test_store import feedback, request


def test_a_response_leads_to_its_model_run_dataset_and_the_successor_it_trained(registry):
    settings = registry.settings
    champion = registry.versions["champion"]
    store = FeedbackStore(settings.feedback_db)
    store.log_request(request(900, version=champion, request_id="lineage-req",
                              model_name=registry.name))
    store.add_feedback(feedback(900, "lineage-req", thumbs="up"))
    export = store.export_feedback("aigc_feedback-run-7", 4, lambda rows: "file:///snap")
    # The fixture's versions were all registered by lifecycle run "r": it plays the run
    # that trained on this export.
    store.mark_consumed(export.export_id, "r")
    store.close()

    tree = lineage("lineage-req", settings)
    served = tree["served_by"]
    assert served["version"] == champion and served["dag_run_id"] == "r"
    assert served["training_run_id"] and served["mlflow_run_id"]
    [fb] = tree["feedback"]
    assert (fb["export_id"], fb["export_run"], fb["consumed_by"]) == (
        export.export_id, "aigc_feedback-run-7", "r")
    assert {s["version"] for s in fb["successors"]} == set(registry.versions.values())
    text = render(tree)
    assert f"served by {registry.name} version {champion}" in text
    assert "trained in lifecycle run r" in text
