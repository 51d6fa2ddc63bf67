#!/usr/bin/env bash
# jaxnas entry point.
#   ./run.sh               set up .venv, build the demo data if missing, run the demo job
#   ./run.sh test          run the test suite
#   ./run.sh compare       SCNAS vs U-ResNet vs random under one budget (experiments/compare.py)
#   ./run.sh NAME [flags]  python -m jaxnas.main --flagfile=experiments/NAME.flags [flags]
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
VENV="$ROOT/.venv"
PY="$VENV/bin/python"

ensure_venv() {
  local stamp="$VENV/.requirements.sha" want
  want="$(sha1sum "$ROOT/requirements.txt" | cut -d' ' -f1)"
  if [ -x "$PY" ] && [ "$(cat "$stamp" 2>/dev/null)" = "$want" ]; then return; fi
  echo "run.sh: installing requirements into $VENV" >&2
  [ -x "$PY" ] || "${PYTHON:-python3}" -m venv "$VENV"
  "$PY" -m pip install -q --upgrade pip
  "$PY" -m pip install -q -r "$ROOT/requirements.txt"
  if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
    # GPU machine: the CUDA build of the same jax version.
    local jv; jv="$("$PY" -c 'import jax; print(jax.__version__)')"
    "$PY" -m pip install -q "jax[cuda12]==$jv"
  fi
  echo "$want" > "$stamp"
}

ensure_demo() {  # The embedded real demo task (MNI ICBM152 template via nilearn).
  if [ ! -f "$ROOT/data/demo/dataset.json" ]; then
    echo "run.sh: building the demo dataset in data/demo" >&2
    PYTHONPATH="$ROOT" "$PY" -m jaxnas.data.demo --out "$ROOT/data/demo"
  fi
}

ensure_venv
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
case "${1:-}" in
  test)
    shift
    cd "$ROOT"
    exec "$PY" -m pytest -q tests "$@"
    ;;
  compare)
    shift
    ensure_demo
    cd "$ROOT/experiments"
    exec "$PY" compare.py "$@"
    ;;
  *)
    EXP="${1:-demo}"; shift || true
    FLAGFILE="$ROOT/experiments/$EXP.flags"
    [ -f "$FLAGFILE" ] || { echo "run.sh: no flagfile $FLAGFILE" >&2; exit 2; }
    if grep -q "data/demo" "$FLAGFILE"; then ensure_demo; fi
    # Paths inside flagfiles (and nested --flagfile) resolve from experiments/.
    cd "$ROOT/experiments"
    exec "$PY" -m jaxnas.main --flagfile="$EXP.flags" "$@"
    ;;
esac
