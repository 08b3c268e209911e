# GPU lease 2 of the AFD paper's protocol in parts: the natural start (100 epochs, compiled fp32), returned as
# tar parts under 16 MiB for the next lease to carry; then benchmarks/gpu.py at the trials' batch.
set -u
export PYTHONUNBUFFERED=1 RAY_AUTH_MODE=disabled PYTHONPATH=$PWD:$PWD/.gpu/site
PY=python3
mkdir -p /tmp/cifar && tar -xzf .gpu/cifar10-train-jpeg.tar.gz -C /tmp/cifar
(nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv; nproc; cat .gpu/commit
 $PY -c "import torch;print(torch.__version__, torch.version.cuda, torch.backends.cudnn.version())") 2>&1 | tee $OUT/gpu.txt
start=$(date +%s)
timeout ${T1:-400} $PY benchmarks/table1.py --storage /tmp/t1 --stop-after natural data.root=/tmp/cifar 2>&1 | tee $OUT/natural.log
echo "natural wall seconds: $(( $(date +%s) - start ))" | tee -a $OUT/natural.log
(cd /tmp && tar -cf - --exclude=state.pt t1) | split -b 15m -d - $OUT/t1-natural.tar.
ls -la $OUT
timeout ${T2:-150} $PY benchmarks/gpu.py --models resnet18 --batches 128 --steps 20 2>&1 | tee $OUT/gpu-bench.txt
