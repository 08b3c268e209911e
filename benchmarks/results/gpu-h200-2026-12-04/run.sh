# The GPU session's one prepared script: table1.py's protocol shortened to fit the lease (10 natural epochs,
# 2 fine-tuning epochs, all else as the paper), then the fp32 compiled steps of step.py.
set -u
export PYTHONUNBUFFERED=1 RAY_AUTH_MODE=disabled PYTHONPATH=$PWD:$PWD/.gpu/site${EXTRA_PATH:-}
PY=${PY:-python3}
SHORT=${SHORT:-"pretrain.epochs=10 train.epochs=2"}
mkdir -p /tmp/cifar && tar -xzf .gpu/cifar10-train-jpeg.tar.gz -C /tmp/cifar
(nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv; nproc; git log -1 --format=%H 2>/dev/null;
 $PY -c "import torch;print(torch.__version__, torch.version.cuda, torch.backends.cudnn.version())") 2>&1 | tee $OUT/gpu.txt
start=$(date +%s)
timeout ${T1:-400} $PY benchmarks/table1.py --storage /tmp/t1 data.root=/tmp/cifar $SHORT 2>&1 | tee $OUT/table1.log
echo "table1 wall seconds: $(( $(date +%s) - start ))" | tee -a $OUT/table1.log
$PY .gpu/history.py /tmp/t1 2>&1 | tee $OUT/history.txt
cp /tmp/t1/table1-*.md $OUT/ 2>/dev/null
timeout ${T2:-120} $PY benchmarks/step.py --model resnet18 --shape 3,32,32 --batch 128 --device ${STEP_DEVICE:-cuda} \
  --compile --methods vaft,afd,trades --repeats 5 2>&1 | tee $OUT/step.txt
