#!/usr/bin/env bash
# jaxnas entry point.
#   ./run.sh               set up .venv, build the demo data if missing, run the demo job
#   ./run.sh demo_spatial  the same on the spatial demo task (left / right grey matter)
#   ./run.sh test          run the test suite
#   ./run.sh compare       SCNAS vs U-ResNet vs random under one budget (experiments/compare.py)
#   ./run.sh --data_dir=TASK --workdir=W [flags]
#                          the default flow (demo.flags: planner, search, fine-tune,
#                          evaluation) on your own MSD task folder
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

ensure_demo() {  # The embedded real demo tasks (MNI ICBM152 template via nilearn).
  local name="${1:-demo}" task="tissue"
  [ "$name" = "demo_spatial" ] && task="hemispheres"
  if [ ! -f "$ROOT/data/$name/dataset.json" ]; then
    echo "run.sh: building the $task demo dataset in data/$name" >&2
    PYTHONPATH="$ROOT" "$PY" -m jaxnas.data.demo --out "$ROOT/data/$name" --task "$task"
  fi
}

ensure_venv
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
case "${1:-}" in
  test)
    shift
    cd "$ROOT"
    # One pytest-xdist worker per core (at most 4: each holds a few GiB while compiling);
    # a class stays on one worker, so its shared fixture runs once. Flags after `test`
    # come last and win (`-n 0`: one process, as the slow tier in .ci/run runs).
    cores="$(nproc 2>/dev/null || echo 1)"
    workers=$(( cores > 4 ? 4 : (cores < 2 ? 0 : cores) ))
    exec "$PY" -m pytest -q -n "$workers" --dist loadscope tests "$@"
    ;;
  compare)
    shift
    ensure_demo
    cd "$ROOT/experiments"
    exec "$PY" compare.py "$@"
    ;;
  *)
    # `./run.sh --data_dir=TASK --workdir=W`: the default flow (demo.flags) on your data.
    EXP=demo
    if [ $# -gt 0 ] && [ "${1#--}" = "$1" ]; then EXP="$1"; shift; fi
    FLAGFILE="$ROOT/experiments/$EXP.flags"
    [ -f "$FLAGFILE" ] || { echo "run.sh: no flagfile $FLAGFILE" >&2; exit 2; }
    OWN_DATA=0
    for arg in "$@"; do case "$arg" in --data_dir=*) OWN_DATA=1 ;; esac; done
    if [ "$OWN_DATA" = 0 ]; then
      if grep -q "data/demo_spatial" "$FLAGFILE"; then ensure_demo demo_spatial
      elif grep -q "data/demo" "$FLAGFILE"; then ensure_demo demo; fi
    fi
    # Paths inside flagfiles (and nested --flagfile) resolve from experiments/.
    cd "$ROOT/experiments"
    exec "$PY" -m jaxnas.main --flagfile="$EXP.flags" "$@"
    ;;
esac
