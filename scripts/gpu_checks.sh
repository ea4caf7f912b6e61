#!/usr/bin/env bash
# Every check that needs a CUDA GPU, in one run of about 8 minutes on one H200 (docs/testing.md, "On a GPU"):
# the CUDA tests, then the GPU rows of docs/results.md, while the CPU throughput runs on the host's other cores
# (a quiet CPU, unlike a shared CI machine). Writes at most 8 files (JSON results and logs) into OUT_DIR.
# Usage: bash scripts/gpu_checks.sh OUT_DIR    (the project and its test extra installed, one CUDA GPU)
set -uo pipefail
cd "$(dirname "$0")/.."
out="${1:?usage: bash scripts/gpu_checks.sh OUT_DIR}"
mkdir -p "$out"
export MUJOCO_GL=disable HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1 PYTHONPATH=".${PYTHONPATH:+:$PYTHONPATH}"
PY="${PYTHON:-python3}"
failed=0

throughput=(benchmarks/sb3_throughput.py --env HalfCheetah-v5 --threads 1)
"$PY" "${throughput[@]}" --groups on-policy --repeats 5 --ppo-steps 1024 --device cpu \
    --out "$out/sb3_throughput-host-cpu-ppo.json" > "$out/host-cpu-ppo.log" 2>&1 &
host_ppo=$!
"$PY" "${throughput[@]}" --groups off-policy --repeats 5 --gradient-steps 50 --buffer-states 5000 --device cpu \
    --out "$out/sb3_throughput-host-cpu-sac.json" > "$out/host-cpu-sac.log" 2>&1 &
host_sac=$!

# The GPU runs TRL's Triton kernels itself: the CPU interpreter's rerun of test_logprobs is left to CI.
"$PY" -m pytest -q -p no:cacheprovider tests/core/test_truncated_normal_cuda.py tests/trl/test_logprobs.py \
    --deselect tests/trl/test_logprobs.py::test_this_file_passes_with_trls_triton_kernels_run_by_tritons_cpu_interpreter \
    > "$out/cuda-tests.log" 2>&1 || failed=1
tail -n 3 "$out/cuda-tests.log"
"$PY" benchmarks/truncated_normal_ops.py --device cuda --out "$out/truncated_normal_ops-cuda.json" || failed=1
"$PY" "${throughput[@]}" --groups off-policy --repeats 7 --gradient-steps 200 --buffer-states 20000 \
    --device cuda --out "$out/sb3_throughput-cuda.json" || failed=1
"$PY" benchmarks/trl_step.py --device cuda --preset qwen2-0.5b --repeats 10 \
    --out "$out/trl_step-qwen2-0.5b-cuda.json" || failed=1

wait "$host_ppo" || failed=1
wait "$host_sac" || failed=1
tail -n 12 "$out/host-cpu-ppo.log" "$out/host-cpu-sac.log"
exit "$failed"
