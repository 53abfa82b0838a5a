#!/usr/bin/env bash
# Start, in the background on loopback: a Prefect server, a process worker with this project's
# deployments, the MLflow UI (server over the embedded sqlite store) and the scorer.
# Logs and PIDs go to .run/; `make down` (infra/local/down.sh) stops everything.
set -euo pipefail
cd "$(dirname "$0")/../.."
BIN=.venv/bin
RUN=.run
mkdir -p "$RUN" mlruns
export PRICING_REPO_DIR="$PWD"
export PREFECT_API_URL="http://127.0.0.1:${PREFECT_PORT:-4200}/api"
export MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false
# The scorer's reload token, shared with the worker (promotions notify the scorer): yours if set,
# else one generated once and kept in .run/admin-token (never a default anyone can guess).
if [ -z "${PRICING_ADMIN_TOKEN:-}" ]; then
  if [ ! -s "$RUN/admin-token" ]; then
    (umask 077; "$BIN/python" -c 'import secrets; print(secrets.token_hex(32))' >"$RUN/admin-token")
  fi
  PRICING_ADMIN_TOKEN="$(cat "$RUN/admin-token")"
fi
export PRICING_ADMIN_TOKEN

start() {  # name, command...
  local name=$1; shift
  if [ -f "$RUN/$name.pid" ] && kill -0 "$(cat "$RUN/$name.pid")" 2>/dev/null; then
    echo "$name already running (pid $(cat "$RUN/$name.pid"))"; return
  fi
  nohup "$@" >"$RUN/$name.log" 2>&1 &
  echo $! >"$RUN/$name.pid"
  echo "started $name (pid $!, log $RUN/$name.log)"
}

wait_http() {  # url, seconds
  for _ in $(seq 1 "$2"); do curl -sf "$1" >/dev/null && return 0; sleep 1; done
  echo "timed out waiting for $1" >&2; return 1
}

start prefect-server "$BIN/prefect" server start --host 127.0.0.1 --port "${PREFECT_PORT:-4200}"
start mlflow "$BIN/mlflow" server --backend-store-uri sqlite:///mlruns/mlflow.db \
  --artifacts-destination ./mlruns/artifacts --host 127.0.0.1 --port "${MLFLOW_PORT:-5000}" --workers 1
wait_http "http://127.0.0.1:${PREFECT_PORT:-4200}/api/health" 90
"$BIN/prefect" work-pool inspect pricing-local >/dev/null 2>&1 \
  || "$BIN/prefect" work-pool create pricing-local --type process >/dev/null
"$BIN/prefect" --no-prompt deploy --all >"$RUN/deploy.log" 2>&1 && echo "deployments applied (prefect.yaml)"
export PRICING_SCORER_URL="http://127.0.0.1:${SCORER_PORT:-8000}"  # promotions notify the scorer
start worker "$BIN/prefect" worker start --pool pricing-local
start scorer "$BIN/pricing" serve --port "${SCORER_PORT:-8000}"
wait_http "http://127.0.0.1:${MLFLOW_PORT:-5000}/health" 90 || true
cat <<MSG

Prefect UI:  http://127.0.0.1:${PREFECT_PORT:-4200}   (deployments: training/nightly, training/manual)
MLflow UI:   http://127.0.0.1:${MLFLOW_PORT:-5000}   (experiments = data sets; compare runs, see plots/)
Scorer:      http://127.0.0.1:${SCORER_PORT:-8000}/readyz
Run a flow:  PREFECT_API_URL=$PREFECT_API_URL $BIN/prefect deployment run training/manual
Stop:        make down
MSG
