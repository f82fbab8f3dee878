"""The embedded default: every Airflow/MLflow/GX setting that keeps state under one folder.

`python -m tasks.localenv <home>` prints it as shell exports for the Makefile; the test
fixtures call `local_env` for their temporary homes, so both share one definition.
"""

from __future__ import annotations

import shlex
import sys
from pathlib import Path

from tasks.settings import PROJECT_ROOT


def local_env(home: Path, *, api_port: int = 8080) -> dict[str, str]:
    home = home.resolve()
    airflow = home / "airflow"
    return {
        "AIGC_HOME": str(home),
        "AIRFLOW_HOME": str(airflow),
        "AIRFLOW__CORE__DAGS_FOLDER": str(PROJECT_ROOT / "dags"),
        "AIRFLOW__CORE__PLUGINS_FOLDER": str(PROJECT_ROOT / "plugins"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
        # Each LocalExecutor worker is a full Python process; two fit a 2-core laptop.
        "AIRFLOW__CORE__PARALLELISM": "2",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": "admin:admin",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(airflow / "passwords.json"),
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{airflow / 'airflow.db'}",
        "AIRFLOW__API__PORT": str(api_port),
        "AIRFLOW__API__BASE_URL": f"http://localhost:{api_port}",
        "AIRFLOW__SCHEDULER__ENABLE_HEALTH_CHECK": "False",
        "AIRFLOW__LOGGING__BASE_LOG_FOLDER": str(airflow / "logs"),
        "MLFLOW_TRACKING_URI": f"sqlite:///{home / 'mlflow' / 'mlflow.db'}",
        "AIGC_MLFLOW_ARTIFACT_ROOT": str(home / "mlflow" / "artifacts"),
        "MLFLOW_DISABLE_TELEMETRY": "true",
        "DO_NOT_TRACK": "true",
        "GX_ANALYTICS_ENABLED": "False",
        "HF_HUB_OFFLINE": "1",
        "HF_HOME": str(home / "hf"),
        "TOKENIZERS_PARALLELISM": "false",
    }


def main(argv: list[str]) -> int:
    home = Path(argv[0]) if argv else PROJECT_ROOT / "var"
    for key, value in local_env(home).items():
        print(f"export {key}={shlex.quote(value)}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
