#!/usr/bin/env bash
# The AFD paper's protocol (benchmarks/table1.py) in parts, for GPU leases too short for the whole of it
# (about 30 minutes on an H200) and with 64 MiB travelling each way: a ResNet-18 checkpoint is 45 MB, so runs
# travel as tar parts of 15 MiB, each returned into .gpu/parts here (ignored) and carried back a few a call.
# On the GPU machine the storage lives in /tmp/t1 while a lease lasts. Run from the checkout there, with
# .gpu/ holding the CIFAR-10 tarball, commit and, in .gpu/site, the pure-Python packages the GPU machine
# lacks (benchmarks/README.md). The calls of each lease, in order:
#
#   lease 1: natural                    100 natural epochs; returns pretrained.tar.*
#   lease 2: load (x2)                  pretrained.tar.* carried, two parts a call beside the checkout
#            train                      AFD, vAFT and TRADES fine-tuned at once; returns AFD's run
#            return vaft; return trades the other two, one a call
#   lease 3: load (x5); evaluate afd; evaluate vaft      pretrained, afd and vaft carried; returns evaluations-*
#   lease 4: load (x7); evaluate trades; evaluate        every run and evaluation carried; prints the table
#
# Evaluation runs in strict fp32 (no TF32), so one model's AutoAttack takes minutes (benchmarks/README.md):
# one model a call keeps each call inside the 10 minutes a call may run; what a call finished is kept.
# TABLE1_ARGS passes more to table1.py (a CPU check: PY=python OUT=/tmp/out TABLE1_ARGS=--smoke ...).
set -u -o pipefail
export PYTHONUNBUFFERED=1 RAY_AUTH_MODE=disabled PYTHONPATH=$PWD:$PWD/.gpu/site
PY=${PY:-python3}
STORE=/tmp/t1
PARTS=${PARTS:-.gpu/parts}  # the returned tar parts, here; on the GPU machine, the ones this call carried
DATA=cifar10_folder

prepare() {  # the data set, the runs the load calls carried, and a record of the machine and code
    mkdir -p /tmp/cifar $STORE && tar -xzf .gpu/cifar10-train-jpeg.tar.gz -C /tmp/cifar || return
    for run in $(ls /tmp/parts 2>/dev/null | sed 's/\.tar\.[0-9]*$//' | sort -u); do
        cat /tmp/parts/$run.tar.* | tar -xf - -C $STORE || { echo "$run: parts missing: load them all" >&2; return 1; }
    done
    (nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv; nproc; cat .gpu/commit
     $PY -c "import torch; print(torch.__version__, torch.version.cuda, torch.backends.cudnn.version())") \
        > "$OUT/machine.txt" 2>&1
}
table1() {  # table1.py on this storage, timed, its output in $OUT/<part>.log
    local start=$SECONDS
    $PY benchmarks/table1.py --storage $STORE "$@" ${TABLE1_ARGS:-} data.root=/tmp/cifar 2>&1 | tee "$OUT/$part.log"
    local rc=$?
    echo "$part wall seconds: $((SECONDS - start))" | tee -a "$OUT/$part.log"
    return $rc
}
ship() {  # ship NAME FOLDER [tar options]: FOLDER of the storage back as NAME.tar.*, without training state,
          # in parts under the 16 MiB a returned file may have
    local name=$1 folder=$2
    shift 2
    (cd $STORE && tar -cf - --exclude=state.pt "$@" "$folder") | split -b 15m -d - "$OUT/$name.tar."
}

usage="say natural, load, train, return vaft|trades or evaluate [afd|vaft|trades]"
part=${1:-}
case $part in
    natural) prepare && table1 --stop-after natural && ship pretrained pretrained ;;
    load) mkdir -p /tmp/parts && cp $PARTS/*.tar.* /tmp/parts/ && ls /tmp/parts ;;
    train) prepare && table1 --stop-after train && ship afd "table1-$DATA-afd" ;;
    return) [ -n "${2:-}" ] || { echo "table1_parts.sh: return which run? $usage" >&2; exit 2; }
        ship "$2" "table1-$DATA-$2" ;;
    evaluate) prepare && table1 ${2:+--methods "$2"} && cp $STORE/table1-$DATA.md "$OUT/" \
        && ship "evaluations-${2:-all}" . --exclude=model.pt ;;
    *) echo "table1_parts.sh: unknown part '$part': $usage" >&2; exit 2 ;;
esac
