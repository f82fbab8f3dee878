"""Register: log the trained model to MLflow, register a version, alias it `challenger`."""

from __future__ import annotations

import logging
from importlib.metadata import version
from typing import Any

from tasks.stage import StageContext
from tasks.tracking import TAG_DAG_ID, TAG_RUN_ID, airflow_link, stage_run

log = logging.getLogger(__name__)
CHALLENGER = "challenger"
CHAMPION = "champion"


def _requirements(extra: tuple[str, ...] = ()) -> list[str]:
    # Explicit requirements skip MLflow's slow dependency inference.
    return [f"{p}=={version(p)}" for p in ("torch", "transformers", "tokenizers", "mlflow",
                                          "pandas", *extra)]


def find_version(client, name: str, run_id: str, role: str):
    """A version this DAG run already registered (a retried task must not add another)."""
    versions = client.search_model_versions(
        f"name = '{name}' and tags.`{TAG_RUN_ID}` = '{run_id}' and tags.`aigc.role` = '{role}'")
    return max(versions, key=lambda v: int(v.version)) if versions else None


def alias_version(client, name: str, alias: str) -> str | None:
    """The version an alias points at; None when the model or the alias does not exist."""
    from mlflow.exceptions import MlflowException

    try:
        return str(client.get_model_version_by_alias(name, alias).version)
    except MlflowException as exc:
        # No such model, or no such alias (e.g. before the first promotion). Anything else
        # (the registry unreachable) is real.
        if exc.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):
            return None
        raise


def champion_version(client, name: str) -> str | None:
    return alias_version(client, name, CHAMPION)


def register(ctx: StageContext, name: str, model_dir: str, role: str, tags: dict[str, Any],
             requirements: tuple[str, ...] = ()) -> str:
    """Log model_dir as a version of registered model `name`, tagged with its lineage;
    return the version. `requirements` names the packages the artifact's format needs
    beyond the base set."""
    import mlflow

    from tasks.registry.model import ARTIFACT_KEY, GenerativeModel, signature

    client = mlflow.MlflowClient()
    existing = find_version(client, name, ctx.run_id, role)
    if existing is not None:
        log.info("reusing version %s registered by an earlier attempt", existing.version)
        mv = str(existing.version)
    else:
        info = mlflow.pyfunc.log_model(
            name="model", python_model=GenerativeModel(), artifacts={ARTIFACT_KEY: model_dir},
            signature=signature(), pip_requirements=_requirements(requirements))
        # The tags that find the version again go in with its creation: a version without
        # them (an attempt cut off between two calls) would be registered again on retry.
        all_tags = {TAG_DAG_ID: ctx.dag_id, TAG_RUN_ID: ctx.run_id, "aigc.role": role} | tags
        mv = str(mlflow.register_model(info.model_uri, name, tags={
            k: str(v) for k, v in all_tags.items()}).version)
    describe(client, ctx, name, mv, role, tags)
    return mv


MODEL_DESCRIPTION = (
    "Generative dialog model built and rolled out by the `aigc_lifecycle` Airflow DAG. "
    "Alias `champion` is what serves; `challenger` is the version under evaluation or in "
    "its canary. Each version's description says which run made it, from what, and what "
    "was decided about it; its tags hold the figures.")


def describe(client, ctx: StageContext, name: str, version: str, role: str,
             tags: dict[str, Any]) -> None:
    """Descriptions a person reads in the registry: the model's (once) and the version's."""
    if not client.get_registered_model(name).description:
        client.update_registered_model(name, description=MODEL_DESCRIPTION)
    made_by = airflow_link(ctx, ctx.stage)
    source = tags.get("aigc.base_model")
    what = (f"Compressed with `{role.split(':', 1)[1]}` from version "
            f"{tags.get('aigc.compress.base_version')}" if role.startswith("compressed:")
            else "Registered" if source is None
            else "Trained from scratch" if source == "scratch"
            else f"Fine-tuned from {source}")
    client.update_model_version(name, version, description=(
        f"{what} (role `{role}`); made by Airflow DAG run {made_by} of `{ctx.dag_id}`."))


def add_decision(client, name: str, version: str, decision: str) -> None:
    """Append the promotion decision to a version's description."""
    current = client.get_model_version(name, version).description or ""
    client.update_model_version(name, version,
                                description=f"{current}\n\nDecision: {decision}"[:4900])


# What a trained version records of where it came from; versions built from it (compressed
# candidates) inherit the same tags.
LINEAGE_TAGS = ("aigc.dataset_hash", "aigc.base_model", "aigc.architecture",
                "aigc.finetune_method")


def lineage_of(tags: dict[str, str]) -> dict[str, str]:
    """The lineage tags among a version's tags (aigc.base_model.* names a registered base)."""
    return {k: v for k, v in tags.items()
            if k in LINEAGE_TAGS or k.startswith("aigc.base_model.")}


def run(ctx: StageContext) -> dict[str, Any]:
    import mlflow

    trained = ctx.input("train")
    ingest = ctx.input("ingest")
    base = ctx.input("base_model")
    name = base["model_name"]
    metrics = {k: trained[k] for k in ("val_loss", "val_perplexity", "train_loss")}
    lineage = {"aigc.dataset_hash": ingest["dataset_hash"],  # the keys of LINEAGE_TAGS
               "aigc.base_model": base["source"] or "scratch",
               "aigc.architecture": base["architecture"],
               "aigc.finetune_method": trained.get("finetune_method", "full"),
               **base["lineage"]}
    with stage_run(ctx):
        version_ = register(ctx, name, trained["model_uri"], "trained",
                            lineage | {f"aigc.metric.{k}": f"{v:.6g}"
                                       for k, v in metrics.items()})
        mlflow.MlflowClient().set_registered_model_alias(name, CHALLENGER, version_)
    log.info("registered %s version %s as %s", name, version_, CHALLENGER)
    return {"model_name": name, "version": version_,
            "model_uri": f"models:/{name}/{version_}", "alias": CHALLENGER}
