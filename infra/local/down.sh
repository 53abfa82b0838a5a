#!/usr/bin/env bash
# Stop what infra/local/up.sh started, in order: the worker, its flow runs (their process groups,
# their runs marked Cancelled while the Prefect server still answers), the scorer, the MLflow and
# Prefect servers, then PostgreSQL. Each service's whole process group gets SIGTERM, then SIGKILL
# after 15 s (PostgreSQL: SIGINT, its fast shutdown).
cd "$(dirname "$0")/../.." || exit 1
BIN=${BIN:-.venv/bin}
RUN=${PRICING_RUN_DIR:-.run}
PREFECT_PORT=4200
# shellcheck disable=SC2046  # stack.env is up.sh's one line of NAME=value words
[ -f "$RUN/stack.env" ] && export $(cat "$RUN/stack.env")

stop() {  # name [signal [target]]: target "-" (default) is the process group, "" the process
  local f="$RUN/$1.pid" sig=${2:-TERM} group=${3--} pid
  [ -f "$f" ] || return 0
  pid=$(cat "$f")
  if kill -0 "$pid" 2>/dev/null; then
    # up.sh starts each service in a session of its own: its group is its pid.
    kill "-$sig" -- "$group$pid" 2>/dev/null || kill "-$sig" "$pid" 2>/dev/null
    for _ in $(seq 1 15); do kill -0 "$pid" 2>/dev/null || break; sleep 1; done
    if kill -0 "$pid" 2>/dev/null; then
      kill -KILL -- "-$pid" 2>/dev/null || kill -KILL "$pid" 2>/dev/null
    fi
    echo "stopped $1 (pid $pid)"
  fi
  rm -f "$f"
}

stop worker
# Prefect starts each flow run in a session of its own: stopping the worker leaves them running.
api=()
[ -f "$RUN/prefect-server.pid" ] && kill -0 "$(cat "$RUN/prefect-server.pid")" 2>/dev/null \
  && api=(--api-url "http://127.0.0.1:$PREFECT_PORT/api")
"$BIN/python" infra/local/stop_flow_runs.py --stack "$(realpath "$RUN")" "${api[@]}" \
  || echo "some flow runs may still show Running: see above" >&2
stop scorer
stop mlflow
stop prefect-server
stop postgres INT ""  # the postmaster only: it shuts its backends down
rm -f "$RUN/stack.env"
