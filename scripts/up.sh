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
echo "logs: $AIGC_HOME/airflow-standalone.log, $AIGC_HOME/mlflow-ui.log; stop with: make down"
