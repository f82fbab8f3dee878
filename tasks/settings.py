"""Deployment settings read from the environment: where state lives, never per-run knobs."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parent.parent


def home() -> Path:
    """Where the embedded default keeps its state (AIGC_HOME, else var/ in the project)."""
    return Path(os.environ.get("AIGC_HOME", PROJECT_ROOT / "var"))


@dataclass(frozen=True)
class Settings:
    """Where artifacts, MLflow state and readable datasets live.

    These come from the deployment, not from a trigger's conf, so a REST caller cannot
    widen the set of files a run may read.
    """

    artifact_root: Path
    allowed_roots: tuple[str, ...]
    tracking_uri: str
    mlflow_artifact_root: str
    experiment: str
    feedback_db: str = ""  # the serving request/feedback store: a SQLite path or postgresql:// URL

    @classmethod
    def from_env(cls) -> Settings:
        var = home()
        artifact_root = Path(os.environ.get("AIGC_ARTIFACT_ROOT", var / "artifacts"))
        roots = os.environ.get("AIGC_ALLOWED_ROOTS")
        allowed = (
            tuple(r for r in roots.split(",") if r)
            if roots
            else (str(PROJECT_ROOT / "data"), str(var / "data"))
        )
        return cls(
            artifact_root=artifact_root.resolve(),
            allowed_roots=allowed,
            tracking_uri=os.environ.get(
                "MLFLOW_TRACKING_URI", f"sqlite:///{(var / 'mlflow' / 'mlflow.db').resolve()}"
            ),
            mlflow_artifact_root=os.environ.get(
                "AIGC_MLFLOW_ARTIFACT_ROOT", str((var / "mlflow" / "artifacts").resolve())
            ),
            experiment=os.environ.get("AIGC_EXPERIMENT", "aigc_lifecycle"),
            feedback_db=os.environ.get("AIGC_FEEDBACK_DB",
                                       str((var / "serving" / "feedback.db").resolve())),
        )

    def to_env(self) -> dict[str, str]:
        """The environment from which a child process or pod rebuilds these settings."""
        return {
            "AIGC_ARTIFACT_ROOT": str(self.artifact_root),
            "AIGC_ALLOWED_ROOTS": ",".join(self.allowed_roots),
            "MLFLOW_TRACKING_URI": self.tracking_uri,
            "AIGC_MLFLOW_ARTIFACT_ROOT": self.mlflow_artifact_root,
            "AIGC_EXPERIMENT": self.experiment,
        } | ({"AIGC_FEEDBACK_DB": self.feedback_db} if self.feedback_db else {})
