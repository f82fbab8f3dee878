#!/usr/bin/env bash
# Stop exactly the process groups that `make up` started (and nothing else).
set -uo pipefail
pids=${1:?pid folder}
for name in serving airflow mlflow; do
  file="$pids/$name"
  [ -s "$file" ] || continue
  pid=$(cat "$file")
  if kill -0 "$pid" 2>/dev/null; then
    # Children first (scheduler, dag-processor, api-server, triggerer), then the parent:
    # killing the parent first leaves orphans holding the port.
    pkill -TERM -P "$pid" 2>/dev/null || true
    kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 30); do kill -0 "$pid" 2>/dev/null || break; sleep 1; done
    kill -KILL -- "-$pid" 2>/dev/null || true
    echo "stopped $name (pid $pid)"
  fi
  rm -f "$file"
done
