#!/usr/bin/env bash
# Stop what infra/local/up.sh started (SIGTERM, then SIGKILL after 15 s).
cd "$(dirname "$0")/../.." || exit 1
for f in .run/*.pid; do
  [ -f "$f" ] || continue
  pid=$(cat "$f")
  name=$(basename "$f" .pid)
  if kill "$pid" 2>/dev/null; then
    for _ in $(seq 1 15); do kill -0 "$pid" 2>/dev/null || break; sleep 1; done
    kill -0 "$pid" 2>/dev/null && kill -9 "$pid" 2>/dev/null
    echo "stopped $name (pid $pid)"
  fi
  rm -f "$f"
done
