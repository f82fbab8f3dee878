"""Helpers for tests that drive a real Airflow: an isolated home and CLI calls into it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from tasks.localenv import local_env
from tasks.summary import parse_runs

BIN = Path(sys.executable).parent


def airflow_env(home: Path, *, api_port: int = 8080, **extra: str) -> dict[str, str]:
    env = os.environ | local_env(home / "var", api_port=api_port)
    env |= {"AIGC_ALLOWED_ROOTS": str(home), "PATH": f"{BIN}:{env.get('PATH', '')}"} | extra
    return env


def airflow(env: dict[str, str], *args: str, check: bool = True,
            timeout: int = 900) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(BIN / "airflow"), *args], env=env, capture_output=True,
                          text=True, timeout=timeout, check=check)


def migrate(env: dict[str, str]) -> None:
    Path(env["AIRFLOW_HOME"]).mkdir(parents=True, exist_ok=True)
    airflow(env, "db", "migrate")


def dag_test(env: dict[str, str], conf: dict) -> subprocess.CompletedProcess[str]:
    return airflow(env, "dags", "test", "aigc_lifecycle", "-c", json.dumps(conf), check=False)


def make_run(env: dict[str, str], conf: dict) -> subprocess.CompletedProcess[str]:
    """What `make run` does: the run through Airflow's executor, its progress on stdout."""
    log = Path(env["AIGC_HOME"]) / "last-run.log"
    return subprocess.run([sys.executable, "-m", "tasks.progress", "--conf", json.dumps(conf),
                           "--log", str(log)], env=env, capture_output=True, text=True,
                          timeout=1200, check=False)


def runs(env: dict[str, str]) -> list[dict]:
    return parse_runs(airflow(env, "dags", "list-runs", "aigc_lifecycle", "-o", "json").stdout)
