"""The local services a person looks at: Airflow (API server + UI, scheduler, DAG processor,
triggerer), the MLflow UI and the model server — started, checked and stopped in one place
for `make up` / `make down`, `make run` and the tests.

Every server binds to `AIGC_BIND_HOST` (127.0.0.1 unless a deployment opens it). Airflow's
components are started one by one instead of through `airflow standalone`, which cannot be
told where to bind: its scheduler and triggerer would serve task logs on every interface
(ports 8793/8794). They run with `--skip-serve-logs`: finished tasks' logs are read from
the local log folder by the API server.

    python -m tasks.services up [--mlflow-port 5000] [--server-port 8000]
    python -m tasks.services down
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

BIN = Path(sys.executable).parent


def bind_host(env: Mapping[str, str] = os.environ) -> str:
    return env.get("AIGC_BIND_HOST", "127.0.0.1")


@dataclass(frozen=True)
class Service:
    name: str
    argv: list[str]
    health: str | None = None  # a URL that answers 2xx once the service is up


def airflow_services(host: str, port: int) -> list[Service]:
    airflow = str(BIN / "airflow")
    return [
        Service("airflow-api-server", [airflow, "api-server", "--host", host, "--port",
                                       str(port), "--workers", "1"],
                f"http://127.0.0.1:{port}/api/v2/monitor/health"),
        Service("airflow-scheduler", [airflow, "scheduler", "--skip-serve-logs"]),
        Service("airflow-dag-processor", [airflow, "dag-processor"]),
        Service("airflow-triggerer", [airflow, "triggerer", "--skip-serve-logs"]),
    ]


def mlflow_service(host: str, port: int, env: Mapping[str, str]) -> Service:
    return Service("mlflow-ui", [
        str(BIN / "mlflow"), "ui", "--backend-store-uri", env["MLFLOW_TRACKING_URI"],
        "--default-artifact-root", env["AIGC_MLFLOW_ARTIFACT_ROOT"], "--host", host,
        "--port", str(port)], f"http://127.0.0.1:{port}/health")


def start_uis(state: Path, env: dict[str, str], api_port: int, mlflow_port: int) -> None:
    """Airflow (all components) and the MLflow UI, bound to AIGC_BIND_HOST, once healthy.
    `make up` and the browser tests start the same stack through here."""
    host = bind_host(env)
    Path(env["AIGC_MLFLOW_ARTIFACT_ROOT"]).mkdir(parents=True, exist_ok=True)
    services = [*airflow_services(host, api_port), mlflow_service(host, mlflow_port, env)]
    for service in services:
        start(service, state, env)
    wait_healthy(services)


def model_service(port: int) -> Service:
    return Service("model-server", [sys.executable, "-m", "serving"],
                   f"http://127.0.0.1:{port}/healthz")


def start(service: Service, state: Path, env: dict[str, str] | None = None) -> int:
    """Start a service in its own process group (stopped as a whole); returns its pid."""
    (state / "pids").mkdir(parents=True, exist_ok=True)
    log = state / "logs" / f"{service.name}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as out:
        # PATH: MLflow and Airflow exec further tools (uvicorn, gunicorn) by name.
        proc = subprocess.Popen(service.argv, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True,
                                env=(env or dict(os.environ)) | {
                                    "PATH": f"{BIN}:{os.environ.get('PATH', '')}"})
    (state / "pids" / service.name).write_text(str(proc.pid))
    return proc.pid


def wait_healthy(services: Iterable[Service], timeout: float = 240) -> None:
    import requests

    deadline = time.monotonic() + timeout
    for service in services:
        if service.health is None:
            continue
        while True:
            try:
                if requests.get(service.health, timeout=10).ok:
                    break
            except requests.RequestException:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"{service.name} did not answer at {service.health}")
            time.sleep(1)


def stop_all(state: Path, grace_s: float = 30) -> list[str]:
    """Stop every service started under state (process groups: children included), all at
    once: each gets the same grace period to finish, then is killed."""
    running = {}
    for pid_file in sorted((state / "pids").glob("*")):
        pid = int(pid_file.read_text())
        try:
            os.killpg(pid, signal.SIGTERM)
            running[pid_file] = pid
        except ProcessLookupError:
            pid_file.unlink()
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline and any(_alive(pid) for pid in running.values()):
        time.sleep(0.5)
    for pid_file, pid in running.items():
        if _alive(pid):
            os.killpg(pid, signal.SIGKILL)
        pid_file.unlink()
    return [pid_file.name for pid_file in running]


def _alive(pid: int) -> bool:
    """Whether anything of the process group still runs. The leader is reaped first where it
    is this process's own child (the tests start services): a zombie still counts as alive."""
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)
    try:
        os.killpg(pid, 0)
    except ProcessLookupError:
        return False
    return True


def admin_password() -> str:
    """The Airflow admin's password: generated once, kept in the passwords file."""
    path = Path(os.environ["AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE"])
    if not path.is_file() or not path.read_text().strip():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({"admin": secrets.token_urlsafe(12)}))
        path.chmod(0o600)
    return json.loads(path.read_text())["admin"]


def server_keys(state: Path) -> dict[str, str]:
    """The model server's client and admin keys: generated once into a 0600 file."""
    path = state / "serving" / "keys.json"
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({"AIGC_API_KEYS": secrets.token_urlsafe(24),
                                    "AIGC_ADMIN_KEY": secrets.token_urlsafe(24)}))
        path.chmod(0o600)
    return json.loads(path.read_text())


def up(state: Path, mlflow_port: int, server_port: int) -> None:
    host, api_port = bind_host(), int(os.environ.get("AIRFLOW__API__PORT", "8080"))
    password = admin_password()
    keys = server_keys(state)
    # The canary and promote stages steer this server through the Connection.
    connection = json.dumps({"conn_type": "http", "host": "127.0.0.1", "port": server_port,
                             "password": keys["AIGC_ADMIN_KEY"],
                             "extra": {"api_key": keys["AIGC_API_KEYS"]}})
    env = dict(os.environ) | {"AIRFLOW_CONN_AIGC_MODEL_SERVER": connection,
                              "AIGC_MLFLOW_UI_URL": f"http://127.0.0.1:{mlflow_port}"}
    start(model_service(server_port), state, env | keys | {
        "AIGC_SERVER_HOST": host, "AIGC_SERVER_PORT": str(server_port)})
    start_uis(state, env, api_port, mlflow_port)
    print(f"Airflow UI + REST API v2: http://127.0.0.1:{api_port}  (user admin, password "
          f"{password})")
    print("  The DAGs start paused. aigc_lifecycle runs weekly and on each feedback snapshot"
          " once unpaused;\n  aigc_feedback hourly. Unpause with the toggle in the UI or "
          "`airflow dags unpause <dag_id>`.")
    print(f"MLflow UI: {mlflow_runs_page(mlflow_port)}")
    print(f"Model server: http://127.0.0.1:{server_port} (OpenAPI at /docs; keys in "
          f"{state / 'serving' / 'keys.json'}; it serves once a champion exists)")
    print(f"Bound to {host} (AIGC_BIND_HOST); logs in {state / 'logs'}; stop with: make down")


def mlflow_runs_page(port: int) -> str:
    """The MLflow UI on the lifecycle's runs table (its default view would be GenAI traces)."""
    import mlflow

    from tasks.tracking import TRAINING_VIEW

    mlflow.set_tracking_uri(os.environ["MLFLOW_TRACKING_URI"])
    experiment = mlflow.MlflowClient().get_experiment_by_name(
        os.environ.get("AIGC_EXPERIMENT", "aigc_lifecycle"))
    base = f"http://127.0.0.1:{port}"
    if experiment is None:
        return f"{base}/#/{TRAINING_VIEW}"
    return f"{base}/#/experiments/{experiment.experiment_id}/runs{TRAINING_VIEW}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tasks.services", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("action", choices=["up", "down"])
    parser.add_argument("--mlflow-port", type=int, default=5000)
    parser.add_argument("--server-port", type=int, default=8000)
    args = parser.parse_args(argv)
    state = Path(os.environ["AIGC_HOME"])
    if args.action == "down":
        for name in stop_all(state):
            print(f"stopped {name}")
        return 0
    up(state, args.mlflow_port, args.server_port)
    return 0


if __name__ == "__main__":
    sys.exit(main())
