#!/usr/bin/env bash
# The GPU half in one go: the CUDA tests and every benchmark that takes --device cuda, each
# under its own time limit (a step that fails or runs out of time does not stop the others).
# About 18 minutes on one H200 in all (pack 2, job 6, tests 2.5, train 3, hessian 1.5, metrics
# 1.5, share 1.5); name steps to run only some of them.
# Usage: bash benchmarks/run_gpu.sh [folder for the logs] [step ...]   (default: the first seven;
# steps: pack job tests train hessian metrics share, and the prepared ones not in the default:
# numerics jobs2 levers densepack: benchmarks/README.md#prepared-gpu-measurements)
set -u
out=${1:-gpu-logs}
shift || true
only=" ${*:-pack job tests train hessian metrics share} "
mkdir -p "$out"
export PYTHONUNBUFFERED=1
python=${PYTHON:-python3}

step() {  # step NAME SECONDS COMMAND...: run, tee to $out/NAME.txt, report exit status and time
    local name=$1 limit=$2 started=$SECONDS
    shift 2
    [[ $only == *" $name "* ]] || return 0
    echo "=== $name (limit ${limit} s): $*"
    timeout "$limit" "$@" 2>&1 | tee "$out/$name.txt"
    echo "=== $name: exit ${PIPESTATUS[0]} after $((SECONDS - started)) s"
}

nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv
"$python" -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name())"
step pack 330 "$python" benchmarks/bench_train.py --device cuda --steps 60 --kinds masked --only-pack \
    --pack 1 3 27 --compile
step job 480 "$python" benchmarks/bench_retrain_job.py --device cuda --epochs 2 --threads 2 \
    --jobs fast-27 fp32-27 fast-3 fp32-3 fast-1 fp32-1
step train 190 "$python" benchmarks/bench_train.py --device cuda --steps 200 --compile
step tests 150 "$python" -m pytest tests/test_cuda.py -v -p no:cacheprovider
step hessian 80 "$python" benchmarks/bench_hessian.py --device cuda --samples 200
step metrics 90 "$python" benchmarks/bench_metrics.py --device cuda --train-samples 50000
step share 90 "$python" benchmarks/bench_share.py --device cuda --procs 1 3 6 --steps 150 --repeats 1
# Prepared measurements (numerics first: it runs both settings of a whole MNIST-1D grid at once)
step numerics 270 "$python" benchmarks/bench_numerics.py --device cuda --cores 16 \
    --csv "$out/numerics.csv" --save-tables "$out/numerics-tables"
if [[ -d $out/numerics-tables ]]; then  # one archive instead of hundreds of small files
    tar czf "$out/numerics-tables.tgz" -C "$out" numerics-tables && rm -r "$out/numerics-tables"
fi
step jobs2 230 "$python" benchmarks/bench_retrain_job.py --device cuda --epochs 2 --threads 2 --repeats 1 \
    --jobs fp32-compile-27 tf32-compile-27 --metrics fp32 fast
step levers 60 "$python" benchmarks/bench_levers.py --device cuda --repeats 1 --settings fast
step densepack 150 "$python" benchmarks/bench_train.py --device cuda --steps 60 --kinds dense --only-pack \
    --pack 1 3 --compile
