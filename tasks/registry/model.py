"""The MLflow pyfunc wrapper that makes `models:/<name>@<alias>` load and generate."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import mlflow.pyfunc

ARTIFACT_KEY = "model"
GENERATION_DEFAULTS = {"max_new_tokens": 32, "temperature": 0.8, "top_p": 0.95, "seed": 0}


def model_folder(local: Path) -> Path:
    """The model folder inside a downloaded MLflow model (where its MLmodel file is)."""
    from mlflow.models import Model

    flavor = Model.load(str(local / "MLmodel")).flavors["python_function"]
    return local / flavor["artifacts"][ARTIFACT_KEY]["path"]


def model_dir_of(model_uri: str) -> Path:
    """Download a registered model's artifacts into a temporary folder and return its model
    folder (any format)."""
    return model_folder(Path(mlflow.artifacts.download_artifacts(model_uri)))


class GenerativeModel(mlflow.pyfunc.PythonModel):
    """Prompts in (a `prompt` column), generated responses out; sampling set by params."""

    def load_context(self, context) -> None:
        from tasks.lm.model import load

        self.model = load(context.artifacts[ARTIFACT_KEY])

    def predict(self, context, model_input, params: dict[str, Any] | None = None) -> list[str]:
        p = GENERATION_DEFAULTS | (params or {})
        prompts = [str(x) for x in model_input["prompt"]]
        return self.model.generate(prompts, int(p["max_new_tokens"]), int(p["seed"]),
                                   float(p["temperature"]), float(p["top_p"]))


def signature():
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, ParamSchema, ParamSpec, Schema

    types = {"max_new_tokens": "long", "temperature": "double", "top_p": "double", "seed": "long"}
    return ModelSignature(
        inputs=Schema([ColSpec("string", "prompt")]),
        outputs=Schema([ColSpec("string")]),
        params=ParamSchema([ParamSpec(k, types[k], v) for k, v in GENERATION_DEFAULTS.items()]),
    )
