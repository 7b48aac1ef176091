#!/usr/bin/env bash
# One prepared session on a lent GPU machine (the workplace's `device` tool; never part of the tests).
#
#   1. row a on CUDA with AMP (nnU-Net's default there): MultiRecTrainer / nnUNetTrainer s/iteration and peak
#      CUDA memory at make demo's size (48x48x12, patch = image, batch 2) and at the bench size (patch 16x80x80);
#   2. the same at the demo size with torch.compile (nnUNet_compile=t);
#   3. quality: MultiRecTrainer_MRI_quality at the CPU budget (400 iterations) and at 4x (1600), seeds 0,1,2,
#      on the 200-patient cohort of row c, to tell whether the image-only model's gap to its oracle is budget.
#
# The machine has no network and lacks nnU-Net and its dependencies: they travel as wheels in .whl/ (made
# here with `pip download --python-version 3.12 ...`, SimpleITK as an xz tarball to fit the 64 MiB limit)
# and are installed into the machine's Python. Each step runs under what is left of GPU_SESSION_LIMIT
# seconds and is skipped when too little is left; results land in $OUT.
#
#   run: bash benchmarks/gpu_session.sh       (carry .whl)
set -u
START=$SECONDS
LIMIT=${GPU_SESSION_LIMIT:-540}
OUT=${OUT:-$PWD/bench_run/gpu}
mkdir -p "$OUT"
left() { echo $(( LIMIT - (SECONDS - START) )); }
exec > >(tee -a "$OUT/gpu_session.log") 2>&1
export PYTHONUNBUFFERED=1 nnUNet_def_n_proc=16 nnUNet_compile=f

step() {  # step NAME MIN_SECONDS CMD...: run CMD under the time left, or skip it
    local name=$1 need=$2; shift 2
    local t; t=$(left)
    if [ "$t" -lt "$need" ]; then echo "== SKIP $name: $t s left, needs $need"; return 0; fi
    echo "== $name ($t s left) $(date -u +%H:%M:%S)"
    timeout "$t" "$@"; local rc=$?
    [ $rc -eq 0 ] || echo "== FAILED $name rc=$rc"
}

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
PY=python3
SP=$($PY -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
tar xJf .whl/sitk.tar.xz -C "$SP" || exit 1
$PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir .whl/*.whl || exit 1
export PYTHONPATH=$PWD
$PY -c "import nnunetv2, SimpleITK, sksurv, blosc2, acvl_utils, torch, nnunet_multitask.trainer; \
print('torch', torch.__version__, torch.cuda.get_device_name(0))" || exit 1
echo "== setup done in $((SECONDS - START)) s"

S="benchmarks/bench_training_speed.py --device cuda --warmup 5 --blocks 6 --iters-per-block 10 --memory-iters 5"
step speed_demo 60 $PY $S --size demo --out "$OUT/training_speed_demo_cuda.json"
step speed_bench 60 $PY $S --size bench --out "$OUT/training_speed_bench_cuda.json"
step speed_demo_compile 150 $PY $S --size demo --compile --warmup 15 --out "$OUT/training_speed_demo_cuda_compile.json"

Q="benchmarks/bench_quality.py --device cuda --no-nnunet"
step quality_prepare 300 $PY $Q --models "" --train-only
if [ -f bench_run/quality/dataset/prepared.json ] && [ "$(left)" -gt 150 ]; then
    echo "== quality trainings ($(left) s left) $(date -u +%H:%M:%S)"
    for s in 0 1 2; do
        for m in MultiRecTrainer_MRI_quality MultiRecTrainer_MRI_quality_x4; do
            timeout "$(left)" $PY $Q --models $m --seeds $s --train-only > "bench_run/quality_${m}_${s}.log" 2>&1 &
        done
    done
    wait
    tail -n 3 bench_run/quality_*.log
    step quality_eval 40 $PY $Q --models MultiRecTrainer_MRI_quality,MultiRecTrainer_MRI_quality_x4 --seeds 0,1,2 \
        --bootstrap 500 --out "$OUT/quality_gpu.json"
    tar czf "$OUT/quality_logs.tgz" bench_run/quality_*.log \
        bench_run/quality/dataset/nnUNet_results_seed*/Dataset503_LARCQUALITY/*/fold_0/training_log_*.txt 2>/dev/null
fi
echo "== done in $((SECONDS - START)) s"
