#!/usr/bin/env bash
# The AFD paper's protocol (benchmarks/table1.py) in parts, for GPU leases too short for the whole of it
# (about 25 minutes on an H200) and with 64 MiB each way: a ResNet-18 checkpoint is 45 MB. On the GPU
# machine the storage lives in /tmp/t1 while a lease lasts; between leases, here, in .gpu/stage (ignored).
# Run from the checkout there, with .gpu/ holding the CIFAR-10 tarball and, in .gpu/site, the pure-Python
# packages the GPU machine lacks (benchmarks/README.md, "GPU leases"); each line is one call of the lease:
#
#   lease 1: natural                     100 natural epochs; unpack the returned pretrained.tar.* into .gpu/stage
#   lease 2: load pretrained             (carry .gpu/stage/t1/pretrained alone: with the data it exceeds 64 MiB)
#            train                       AFD, vAFT and TRADES fine-tuned at once, then the AFD model returned
#            return vaft; return trades  the other two, one a call; unpack them into .gpu/stage too
#   lease 3: load pretrained; load afd; load vaft; evaluate afd; evaluate vaft
#            unpack each returned evaluations.tar into .gpu/stage/t1 (tar -xf evaluations.tar -C .gpu/stage/t1)
#   lease 4: load pretrained; load afd; load vaft; load trades; evaluate trades; evaluate    (prints the table)
#
# Evaluation runs in strict fp32 (no TF32), so one model's AutoAttack takes minutes (benchmarks/README.md):
# one model a call keeps each call inside the 10 minutes a call may run; what a call finished is kept.
# TABLE1_ARGS passes more to table1.py (a CPU check: PY=python OUT=/tmp/out TABLE1_ARGS=--smoke ...).
set -u -o pipefail
export PYTHONUNBUFFERED=1 RAY_AUTH_MODE=disabled PYTHONPATH=$PWD:$PWD/.gpu/site
PY=${PY:-python3}
STORE=/tmp/t1
STAGE=${STAGE:-.gpu/stage}  # where the returned parts are unpacked, here
DATA=cifar10_folder

prepare() {  # the data set and a record of the machine and code beside the logs
    mkdir -p /tmp/cifar && tar -xzf .gpu/cifar10-train-jpeg.tar.gz -C /tmp/cifar
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
ship() {  # one run folder back, without its training state, in parts under the 16 MiB a returned file may have
    (cd $STORE && tar -cf - --exclude=state.pt "$1") | split -b 15m -d - "$OUT/$1.tar."
}
folder() { [ "$1" = pretrained ] && echo pretrained || echo "table1-$DATA-$1"; }

part=${1:?"say which part: natural, load NAME, train, return NAME or evaluate [NAME]"}
case $part in
    natural) prepare && table1 --stop-after natural && ship pretrained ;;
    load) mkdir -p $STORE && cp -r "$STAGE/t1/$(folder "$2")" $STORE/ && du -sh $STORE/* ;;
    train) prepare && table1 --stop-after train && ship "$(folder afd)" ;;
    return) ship "$(folder "$2")" ;;
    evaluate) prepare && table1 ${2:+--methods "$2"} && cp $STORE/table1-$DATA.md "$OUT/" \
        && (cd $STORE && tar -cf "$OUT/evaluations.tar" --exclude=model.pt --exclude=state.pt .) ;;
    *) echo "table1_parts.sh: unknown part '$part': say natural, load NAME, train, return NAME or evaluate [NAME]" >&2; exit 2 ;;
esac
