#!/usr/bin/env bash
# Start airflow standalone and the MLflow UI on the project's state; record their pids.
set -euo pipefail
mlflow_port=${1:-5000}
pids="$AIGC_HOME/pids"
mkdir -p "$pids" "$AIRFLOW_HOME"
if [ ! -s "$AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE" ]; then
  password=$(python -c 'import secrets; print(secrets.token_urlsafe(12))')
  printf '{"admin": "%s"}\n' "$password" > "$AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE"
fi
# The model server: keys generated once, kept in a 0600 file, and handed to Airflow as the
# Connection aigc_model_server (the canary stage then steers this server).
keys="$AIGC_HOME/serving/keys.env"
if [ ! -s "$keys" ]; then
  mkdir -p "$AIGC_HOME/serving"
  (umask 077; python - > "$keys" <<'PY'
import secrets
print(f"AIGC_API_KEYS={secrets.token_urlsafe(24)}")
print(f"AIGC_ADMIN_KEY={secrets.token_urlsafe(24)}")
PY
  )
fi
set -a; . "$keys"; set +a
server_port=${AIGC_SERVER_PORT:-8000}
AIGC_SERVER_PORT=$server_port setsid python -m serving > "$AIGC_HOME/serving.log" 2>&1 &
echo $! > "$pids/serving"
AIRFLOW_CONN_AIGC_MODEL_SERVER=$(python -c 'import json, os, sys; print(json.dumps({
    "conn_type": "http", "host": "127.0.0.1", "port": int(sys.argv[1]),
    "password": os.environ["AIGC_ADMIN_KEY"], "extra": {"api_key": os.environ["AIGC_API_KEYS"]}}))' \
  "$server_port")
export AIRFLOW_CONN_AIGC_MODEL_SERVER
setsid airflow standalone > "$AIGC_HOME/airflow-standalone.log" 2>&1 &
echo $! > "$pids/airflow"
mkdir -p "$AIGC_MLFLOW_ARTIFACT_ROOT"
setsid mlflow ui --backend-store-uri "$MLFLOW_TRACKING_URI" \
  --default-artifact-root "$AIGC_MLFLOW_ARTIFACT_ROOT" --host 127.0.0.1 --port "$mlflow_port" \
  > "$AIGC_HOME/mlflow-ui.log" 2>&1 &
echo $! > "$pids/mlflow"
for _ in $(seq 120); do
  curl -fs "http://localhost:$AIRFLOW__API__PORT/api/v2/monitor/health" > /dev/null && break
  sleep 2
done
echo "Airflow UI + REST API v2: http://localhost:$AIRFLOW__API__PORT"
echo "  user: admin   password: $(python -c "import json,sys; print(json.load(open(sys.argv[1]))['admin'])" "$AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE")"
echo "  (passwords file: $AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE)"
echo "MLflow UI: http://127.0.0.1:$mlflow_port"
echo "Model server: http://127.0.0.1:$server_port (OpenAPI at /docs; keys in $keys;"
echo "  it serves once a champion exists: run 'make run' first)"
echo "logs: $AIGC_HOME/airflow-standalone.log, $AIGC_HOME/mlflow-ui.log, $AIGC_HOME/serving.log"
echo "stop with: make down"
