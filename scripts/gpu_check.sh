#!/usr/bin/env bash
# The trainer on a GPU, checked end to end: run it on any machine with a CUDA device (docs/running.md,
# "The trainer on a GPU"), and record what it prints in benchmarks/gpu.md.
#
#   1. tests/test_device.py: the device tests, now with their cuda cases (learner steps on cuda, pinned host
#      copies, checkpoints written on cuda resumed on the cpu and back);
#   2. three short runs with device=cuda, each checked by `hotprune diagnose` (pruned weights exactly zero,
#      workers swapping forward to the pruned versions, no rejected message) and by their logs (the trainer
#      says it learned on cuda; the workers swapped; in teacher-student mode the compressor distilled on cuda):
#      PPO both pruned (CartPole-v1), SAC both pruned with its critics pruned too (Pendulum-v1), PPO
#      teacher-student with distillation (CartPole-v1);
#   3. scripts/bench_gpu.py: PPO and SAC update throughput, cpu against cuda (benchmarks/gpu_speed.md).
#
# Exits 2 at once, saying so, when torch finds no CUDA device; 1 when a check fails.
#
#   scripts/gpu_check.sh [RUNS_DIR]     (default: a fresh directory under /tmp)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python
HP=.venv/bin/hotprune

if ! "$PY" -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)"; then
    echo "gpu_check: no CUDA device here ($("$PY" -c 'import torch; print("torch", torch.__version__)') finds" \
         "none): nothing to check; run it on a machine with an NVIDIA GPU and a CUDA build of torch" >&2
    exit 2
fi
RUNS=${1:-$(mktemp -d /tmp/hotprune-gpu-check.XXXXXX)}
"$PY" -c "import torch; print('gpu_check:', torch.__version__, torch.cuda.get_device_name(0))"

echo "== 1. the device tests, cuda cases included"
"$PY" -m pytest -q tests/test_device.py

COMMON=(--set device=cuda --set "runs_dir=\"$RUNS\"" --set preset=none --set chunk_steps=32
        --set envs_per_worker=4 --set pruning.start_epoch=2 --set pruning.every=3 --set supervisor.heartbeat_s=1.0)

check_run() {  # RUN_ID ROLE_THAT_USES_CUDA: diagnose, then what the logs say of the device and the swaps
    "$HP" diagnose "$RUNS/$1"
    "$PY" - "$RUNS/$1" "$2" <<'EOF'
import sys

from hotprune.runs.runlog import load

run, distils = load(sys.argv[1]), sys.argv[2] == "distils"
started = run.events("trainer", "trainer_started")
swaps = run.all("worker_swapped")
planned = run.events("compressor", "pruning_planned")
problems = []
if not started or not started[-1]["device"].startswith("cuda"):
    problems.append(f"the trainer did not learn on cuda: {started}")
if not swaps or max(e["version"] for e in swaps) < 3:
    problems.append(f"the workers swapped {len(swaps)} times")
if distils and (not planned or planned[-1].get("distill_device") != "cuda"):
    problems.append(f"the compressor did not distil on cuda: {planned}")
for problem in problems:
    print(f"gpu_check: FAIL {sys.argv[1]}: {problem}", file=sys.stderr)
print(f"gpu_check: {sys.argv[1]}: trainer on {started[-1]['device'] if started else None}, {len(swaps)} swaps")
sys.exit(1 if problems else 0)
EOF
}

echo "== 2a. PPO, both pruned, device=cuda"
"$HP" run "${COMMON[@]}" --set run_id=ppo --set env_id=CartPole-v1 --set epochs=12 --set samples_per_epoch=1024
check_run ppo trains
echo "== 2b. SAC, both pruned (actor and critics), device=cuda"
"$HP" run "${COMMON[@]}" --set run_id=sac --set algorithm=sac --set env_id=Pendulum-v1 --set epochs=12 \
    --set samples_per_epoch=512 --set sac.learning_starts=1024 --set sac.utd=0.5 \
    --set pruning.targets=actor,critic --set pruning.method=taylor
check_run sac trains
echo "== 2c. PPO, teacher-student, distilled on cuda"
"$HP" run "${COMMON[@]}" --set run_id=ts --set env_id=CartPole-v1 --set epochs=9 --set samples_per_epoch=1024 \
    --set prune_training_model=false
check_run ts distils

echo "== 3. update throughput, cpu against cuda"
"$PY" scripts/bench_gpu.py --devices cpu,cuda
echo "gpu_check: every check passed (runs in $RUNS)"
