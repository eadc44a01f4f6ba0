#!/usr/bin/env bash
# The checks of issue 5 that need a GPU, as one command for a lent GPU machine (an estimated 7 to 10
# minutes on an H200 once started; not yet timed there). Sections run in order of value, each under its
# own time limit and all within BUDGET (below), so a cut-short run still returns what it finished.
#
#   here, once:      bash benchmarks/gpu_check.sh wheels
#       Hydra and its launcher as wheels in .whl/ (add `/.whl/` to .git/info/exclude): a bare
#       PyTorch + Lightning image lacks them, and a GPU machine may have no package index.
#   on the GPU:      bash benchmarks/gpu_check.sh
#       installs .whl/ into /tmp/site if present, then writes to $OUT (default gpu_results/):
#       report.md (the card, the GPU tests' summary, the bench tables, the sweep timings),
#       log.txt (everything else) and the bench's JSON files.
#   dry run here:    DEVICE=cpu QUICK=1 bash benchmarks/gpu_check.sh
set -uo pipefail

PY=${PY:-python3}
if [ "${1:-}" = wheels ]; then
    PY=${PY_HERE:-.venv/bin/python}
    mkdir -p .whl
    pins=$($PY - <<'EOF'
from importlib.metadata import version
names = ["hydra-core", "omegaconf", "antlr4-python3-runtime", "hydra-joblib-launcher"]
print(" ".join(f"{n}=={version(n)}" for n in names))
EOF
)
    # all pure Python; antlr4's 4.9 runtime exists only as a source archive, so it is built here
    exec $PY -m pip wheel -q --no-deps -w .whl $pins
fi

DEVICE=${DEVICE:-cuda}
OUT=${OUT:-gpu_results}
mkdir -p "$OUT"
REPORT="$OUT/report.md"
LOG="$OUT/log.txt"
: >"$REPORT"
: >"$LOG"
if compgen -G ".whl/*.whl" >/dev/null; then
    $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
        .whl/*.whl >>"$LOG" 2>&1 || { echo "installing .whl/ failed, see $LOG"; exit 1; }
    export PYTHONPATH=/tmp/site
fi
export PYTHONPATH="${PYTHONPATH:+$PYTHONPATH:}$PWD" WANDB_MODE=offline WANDB_SILENT=true PYTHONUNBUFFERED=1

section() { echo -e "\n## $1 ($(date -u +%H:%M:%S))\n" | tee -a "$LOG" >>"$REPORT"; }
# BUDGET (seconds, default 540): the whole script ends within it, under the device tool's 600 s a
# command, so it always gets to write "Done". limit N: N seconds, or what is left of BUDGET if less.
BUDGET=${BUDGET:-540}
limit() {
    local left=$((BUDGET - SECONDS))
    echo $((left < $1 ? (left > 1 ? left : 1) : $1))
}
said() { echo "exit status $1$([ "$1" = 124 ] && echo ' (stopped at its time limit)')"; }
if [ "$DEVICE" = cuda ]; then
    trainer=gpu
    section "Machine"
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader >>"$REPORT" 2>&1
else
    trainer=cpu
    section "Machine (dry run on $DEVICE)"
fi
$PY -c "import torch, lightning; print('torch', torch.__version__, '| lightning', lightning.__version__, \
'| CPU threads', torch.get_num_threads())" >>"$REPORT" 2>&1

if [ -n "${QUICK:-}" ]; then  # the plumbing only, in a minute
    size=(--n-train 3000 --n-test 2000 --n-layers 1 --batch-sizes 64 --steps 4 --block 2 --warmup 1
          --repeats 1 --memory-n-train 3000)
    small=("${size[@]}")
    epochs=1
else
    size=(--repeats 3)
    small=(--n-layers 6 --batch-sizes 512 --repeats 1 --memory-n-train 0)
    epochs=10
fi

if [ "$DEVICE" = cuda ]; then
    section "GPU tests: pytest -m gpu"
    timeout $(limit 240) $PY -m pytest -q -m gpu -p no:cacheprovider tests/test_gpu.py >>"$LOG" 2>&1
    echo "$(said $?); last line: $(tail -n 1 "$LOG")" >>"$REPORT"
fi

bench() {  # $1: title; the rest: arguments of benchmarks.train_speed
    section "$1"
    timeout $(limit 300) $PY -m benchmarks.train_speed --device "$DEVICE" --out "$OUT" "${@:2}" >>"$REPORT" 2>>"$LOG"
    said $? >>"$REPORT"
}
bench "Bench, float32" "${size[@]}"
bench "Bench, bf16-mixed" --precision bf16-mixed "${size[@]}" --memory-n-train 0
bench "Bench, compiled" --compile "${small[@]}"

sweep() {  # $1: title; the rest: extra overrides
    section "$1"
    local t0=$SECONDS
    timeout $(limit 240) $PY -m src.train --multirun data=digits trainer=$trainer model=ae,rae,vae,rvae seed=0,1 \
        trainer.max_epochs=$epochs logger=csv trainer.enable_progress_bar=false \
        hydra.sweep.dir="/tmp/gpu_check_sweep_$SECONDS" "${@:2}" >>"$LOG" 2>&1
    echo "$(said $?); 8 jobs in $((SECONDS - t0)) s" >>"$REPORT"
}
sweep "8 sweep jobs one after another (basic launcher)"
sweep "8 sweep jobs, 4 at a time (joblib)" hydra/launcher=joblib hydra.launcher.n_jobs=4

section "Done"
cat "$REPORT"
