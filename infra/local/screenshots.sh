#!/usr/bin/env bash
# `make screenshots`: README's pictures of the UIs, taken by headless Chromium (Debian's `chromium`).
# Starts a throwaway stack with infra/local/up.sh in a scratch copy of the project (symlinks to the
# code, its own data/, mlruns/, .prefect/ and run folder: your stores and a running `make up` are not
# touched), runs training/manual with LightGBM on a simulated market, validates a broken copy of
# that market (a failed validation's Data Docs), then photographs: MLflow's runs view, the training
# run, the Compare view of its child runs, the registered model and its champion; the Prefect flow
# run's artifacts and its decision in the default UI; the scorer's /docs and the Data Docs. infra/local/down.sh stops the stack on the way out, whatever happened.
#
#   SCORER_PORT=8300 PREFECT_PORT=4500 MLFLOW_PORT=5300   the stack's ports (defaults shown)
#   OUT=docs/screenshots                                   where the PNGs go
#   KEEP=1                                                 keep the scratch folder (its path is printed)
set -euo pipefail
cd "$(dirname "$0")/../.."
REPO=$PWD
BIN=$REPO/${BIN:-.venv/bin}
OUT=$(realpath -m "${OUT:-docs/screenshots}")
export SCORER_PORT=${SCORER_PORT:-8300} PREFECT_PORT=${PREFECT_PORT:-4500} MLFLOW_PORT=${MLFLOW_PORT:-5300}

"$BIN/python" -c 'import sys; sys.path.insert(0, "infra/local"); import browser; sys.exit(browser.chromium() is None)' \
  || { echo "no headless Chromium: apt-get install -y chromium (or set PRICING_CHROMIUM)" >&2; exit 1; }

WORK=$(mktemp -d "${TMPDIR:-/tmp}/pricing-screenshots.XXXXXX")
# Everything but the stores and caches, as symlinks: up.sh runs from $WORK and writes only there.
for f in "$REPO"/* "$REPO"/.venv "$REPO"/.env.example; do
  case "$(basename "$f")" in
    data|mlruns|runs|docs) ;;
    *) [ -e "$f" ] && ln -s "$f" "$WORK/" ;;
  esac
done
export PRICING_RUN_DIR=$WORK/.run PREFECT_HOME=$WORK/.prefect BIN
# MLflow pages are photographed through browser.UI_HOST (no Assistant panel): the server accepts it.
eval "$("$BIN/python" -c 'import shlex, sys; sys.path.insert(0, "infra/local"); import browser
for k, v in browser.MLFLOW_UI_HOST_ENV.items(): print(f"export {k}={shlex.quote(v)}")')"
cleanup() {
  bash "$WORK/infra/local/down.sh" || true
  if [ "${KEEP:-0}" = 1 ]; then echo "kept $WORK"; else rm -rf "$WORK"; fi
}
trap cleanup EXIT

cd "$WORK"
bash infra/local/up.sh
export PREFECT_API_URL="http://127.0.0.1:$PREFECT_PORT/api"

echo "training/manual with configs/lightgbm.yaml on data/sim (a few minutes on a busy machine)..."
"$BIN/prefect" deployment run training/manual -p data_dir=data/sim -p config_path=configs/lightgbm.yaml \
  --watch --watch-timeout 1800 >"$PRICING_RUN_DIR/training-run.log" 2>&1 \
  || { tail -n 30 "$PRICING_RUN_DIR/training-run.log" >&2; echo "the training run failed" >&2; exit 1; }

echo "validating a broken copy of data/sim (2% of the list prices negative)..."
mkdir -p data/broken
cp data/sim/*.* data/broken/
"$BIN/python" - <<'PY'
from pricing import io as pio
from pricing import schema as S

items = pio.read_tables("data/broken")[S.ITEMS]
items.loc[items.index[::50], S.LIST_PRICE] = -5.0  # over the 1% threshold: the suite fails
pio.write_table(items, "data/broken", S.ITEMS)
PY
if "$BIN/pricing" validate --data-dir data/broken >"$PRICING_RUN_DIR/validate-broken.log" 2>&1; then
  echo "the broken copy passed validation: no failed Data Docs to show" >&2
  exit 1
fi

"$BIN/python" "$REPO/infra/local/screenshots.py" --out "$OUT" --data-docs data/broken/gx_docs \
  --mlflow "http://127.0.0.1:$MLFLOW_PORT" --prefect "http://127.0.0.1:$PREFECT_PORT" \
  --scorer "http://127.0.0.1:$SCORER_PORT"
