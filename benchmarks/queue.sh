#!/bin/bash
# The real-data CPU benchmarks that benchmarks/README.md quotes, one after the other on one machine: a step is
# skipped once its log ends in "exit 0", and each resumes where it stopped, so run this again after any stop.
# What they go on from (keep_tables.py) is copied to $KEEP every 10 minutes and after each step: a lost
# machine costs only the work in flight. On a new machine, $STORAGE is first rebuilt from $KEEP.
#
#   DATA_ROOT=<CIFAR-10 JPEG tree> STORAGE=<dir> bash benchmarks/queue.sh       # raygap's environment active
#
# CODE: the checkout the runs import raygap from (default: this one; a worktree at a fixed commit keeps later
# edits away from a run in progress); KEEP: default benchmarks/results/cifar10-store; LOGS: default
# $STORAGE-logs (<step>.log each). Started in the background, start it with job control on (`set -m`), or
# bash leaves SIGINT ignored and Ctrl-C (pkill -INT) cannot stop a step cleanly.
: "${DATA_ROOT:?give DATA_ROOT=<the CIFAR-10 JPEG tree>}" "${STORAGE:?give STORAGE=<a storage folder for the benchmarks>}"
here=$(cd "$(dirname "$0")/.." && pwd)
CODE=${CODE:-$here} KEEP=${KEEP:-$here/benchmarks/results/cifar10-store} LOGS=${LOGS:-$STORAGE-logs}
where="data.root=$DATA_ROOT storage=$STORAGE"
keep() { [ ! -d "$STORAGE" ] || python "$here/benchmarks/keep_tables.py" "$STORAGE" "$KEEP" > /dev/null; }

step() {  # step <name> <command...>
  local log=$LOGS/$1.log; shift
  [ -f "$log" ] && [ "$(tail -1 "$log")" = "exit 0" ] && return 0
  echo "=== $(date -u) $(git -C "$CODE" describe --always --dirty): $* ===" >> "$log"
  "$@" >> "$log" 2>&1
  local code=$?
  echo "exit $code" >> "$log"
  keep
  return $code
}

mkdir -p "$LOGS"
[ -d "$STORAGE" ] || [ ! -d "$KEEP" ] || python "$here/benchmarks/keep_tables.py" "$KEEP" "$STORAGE"
(trap 'kill $nap; exit' TERM; while :; do sleep 600 & nap=$!; wait $nap; keep; done) &  # the keeper
keeper=$!
trap 'kill $keeper' EXIT
cd "$CODE" && export PYTHONPATH=$CODE RAY_AUTH_MODE=disabled
step decay python benchmarks/decay.py $where &&
step compare python -m raygap.compare search=defences_cifar10_cpu $where name=cifar10-defences \
  'methods=[vaft,afd,trades]' 'untuned=[afd]' 'seeds=[0,1]' &&
step wide_grid python -m raygap.tune search=benchmarks/grids/afd_cifar10_cpu_wide_grid.yaml $where &&
step wide_grid_pgd1 python -m raygap.tune search=benchmarks/grids/afd_cifar10_cpu_wide_grid_pgd1.yaml $where &&
step pbt python benchmarks/pbt.py $where
