#!/usr/bin/env bash
# The CUDA check of iwae: what the machine is, the cuda-marked tests, and the GPU's numbers.
#
#   bash benchmarks/gpu_check.sh                 # on a CUDA machine: under 8 minutes
#   bash benchmarks/gpu_check.sh --device cpu    # the same steps on the CPU, tiny settings (a try-out)
#
# From a bare machine with torch preinstalled (--device cpu installs nothing): iwae is installed with `pip install -e . --no-deps`
# (else used from src/ by PYTHONPATH), and the missing dependencies are installed from wheels in
# $IWAE_WHEELS, shared/wheels or wheels/ (offline: --no-index, torch pinned to the installed one).
# Prints, in order:
#   1. nvidia-smi; python, torch, CUDA and cuDNN versions, the GPU, TF32 settings;
#   2. the tests marked cuda (pytest -m cuda), which check device placement on the GPU;
#   3. benchmarks/kernels.py: both variants of each kernel iwae picks by device (tanh as
#      2 sigmoid(2h) - 1 vs torch.tanh; matmul + bias vs F.linear; fused log-likelihood vs BCE);
#   4. benchmarks/bench.py: training steps/s at batch 20, k = 1 and 50 (eager), and L_5000 images/s;
#   5. side by side, one process each: eager / compiled (CUDA graphs) / bf16-mixed (/ batched members
#      4 and 10 where iwae.members exists) at batch 20, k = 1 and 50, and L_5000 images/s;
#  5b. the whole step as one compiled program (--compile step): eager, the program called, and the
#      program replayed as a CUDA graph, at batch 20, k = 1 and 50;
#   6. the projected wall time of the paper protocol (3,280 epochs) for one run and for Table 1's
#      MNIST half (10 runs), from steps/s of 1 and 2 layers at k = 1, 5, 50 (benchmarks/projection.py).
# Each step has its own time limit; the script goes on after a failed step and exits 1 if any failed.
# Python: $PYTHON, else python, else python3.

set -u
cd "$(dirname "$0")/.."
ROOT=$(pwd)
DEVICE=cuda
if [ "${1:-}" = "--device" ] && [ -n "${2:-}" ]; then
    DEVICE=$2
elif [ -n "${1:-}" ]; then
    echo "gpu_check.sh: error: unknown argument ${1}; use --device cpu or no argument" >&2
    exit 2
fi
if [ "$DEVICE" != cuda ] && [ "$DEVICE" != cpu ]; then
    echo "gpu_check.sh: error: --device must be cuda or cpu, got $DEVICE" >&2
    exit 2
fi
PY=${PYTHON:-$(command -v python || command -v python3 || true)}
# one python start (torch takes seconds to import): says what is missing, or nothing
PROBLEM=$("${PY:-false}" -c "
import torch, sys
if sys.argv[1] == 'cuda' and not torch.cuda.is_available():
    print(f'CUDA is not available to torch {torch.__version__} (built for CUDA {torch.version.cuda}); '
          f'run it on a GPU machine, or --device cpu to try the steps')
" "$DEVICE" 2>/dev/null) || PROBLEM="no python with torch found (set PYTHON=/path/to/python)"
if [ -n "$PROBLEM" ]; then
    echo "gpu_check.sh: error: $PROBLEM" >&2
    exit 2
fi
export PYTHONPATH="$ROOT/src${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONDONTWRITEBYTECODE=1
FAILED=()
section() { printf '\n===== %s =====\n' "$*"; }
step() {  # step SECONDS NAME COMMAND...: runs COMMAND under a time limit, records a failure
    local limit=$1 name=$2
    shift 2
    timeout --kill-after=10 "$limit" "$@"
    local rc=$?
    if [ $rc -ne 0 ]; then
        echo "!! $name failed (exit status $rc$([ $rc -eq 124 ] && echo ", over its ${limit} s"))"
        FAILED+=("$name")
    fi
}

# ----------------------------------------------------------------------------- setup
section "setup"
MISSING=$("$PY" - <<'EOF'
import importlib.util
need = {"numpy": "numpy", "yaml": "pyyaml", "safetensors": "safetensors", "click": "click", "tqdm": "tqdm",
        "matplotlib": "matplotlib", "scipy": "scipy", "markdown": "markdown", "pytest": "pytest"}
print(" ".join(pkg for mod, pkg in need.items() if importlib.util.find_spec(mod) is None))
EOF
)
if [ "$DEVICE" = cpu ]; then  # a try-out: this python is left as it is, iwae used from src/
    [ -n "$MISSING" ] && echo "!! missing: $MISSING (not installed with --device cpu)"
elif [ -n "$MISSING" ]; then
    WHEELS=""
    for d in "${IWAE_WHEELS:-}" "$ROOT/shared/wheels" "$ROOT/wheels"; do
        if [ -n "$d" ] && [ -d "$d" ]; then WHEELS=$d; break; fi
    done
    if [ -n "$WHEELS" ]; then
        echo "installing $MISSING from $WHEELS (offline, torch pinned)"
        CONSTRAINTS=$(mktemp)
        "$PY" -c "import torch; print('torch==' + torch.__version__)" > "$CONSTRAINTS"
        "$PY" -m pip install -q --no-index --find-links "$WHEELS" -c "$CONSTRAINTS" $MISSING \
            || echo "!! installing from $WHEELS failed; going on with what is there"
    else
        echo "!! missing: $MISSING, and no wheels (\$IWAE_WHEELS, shared/wheels, wheels/); trying pip's index"
        timeout 120 "$PY" -m pip install -q $MISSING || echo "!! pip install $MISSING failed; going on"
    fi
fi
if [ "$DEVICE" = cpu ]; then
    echo "iwae used from $ROOT/src (PYTHONPATH)"
elif "$PY" -m pip install -q --no-deps --no-build-isolation -e . >/dev/null 2>&1; then
    echo "iwae installed (pip install -e . --no-deps)"
else
    echo "iwae used from $ROOT/src (PYTHONPATH): the editable install failed"
fi
"$PY" -c "import iwae, sys; print('iwae from', iwae.__file__)" || { echo "gpu_check.sh: error: iwae does not import" >&2; exit 2; }

# ----------------------------------------------------------------------------- 1. the machine
section "1. machine"
if [ "$DEVICE" = cuda ]; then
    timeout 60 nvidia-smi || echo "!! nvidia-smi failed or is absent"
fi
"$PY" - <<'EOF'
import platform, torch
print(f"python {platform.python_version()}, torch {torch.__version__}, CUDA {torch.version.cuda}, "
      f"cuDNN {torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None}")
if torch.cuda.is_available():
    for i in range(torch.cuda.device_count()):
        p = torch.cuda.get_device_properties(i)
        print(f"cuda:{i}: {p.name}, {p.total_memory / 2**30:.0f} GiB, capability {p.major}.{p.minor}")
    print(f"TF32: matmul {torch.backends.cuda.matmul.allow_tf32}, cudnn {torch.backends.cudnn.allow_tf32}; "
          f"float32 matmul precision {torch.get_float32_matmul_precision()}")
print(f"CPU threads {torch.get_num_threads()}")
EOF

# ----------------------------------------------------------------------------- 2. tests
section "2. tests marked cuda (pytest -m cuda)"
mapfile -t CUDA_TESTS < <(grep -l -E "pytest\.mark\.cuda|^@cuda" tests/test_*.py)
if [ ${#CUDA_TESTS[@]} -eq 0 ]; then
    echo "!! no test file marks tests cuda"
    FAILED+=("tests")
else
    step 300 "pytest -m cuda" "$PY" -m pytest -q -rs -p no:cacheprovider -m cuda "${CUDA_TESTS[@]}"
fi

# ----------------------------------------------------------------------------- 3. kernels
section "3. kernel variants on $DEVICE (benchmarks/kernels.py)"
if [ "$DEVICE" = cuda ]; then
    step 120 "kernels.py" "$PY" benchmarks/kernels.py --device cuda --rows 1000,5000,100000
else
    step 120 "kernels.py" "$PY" benchmarks/kernels.py --device cpu --rows 200 --seconds 0.05
fi

# ----------------------------------------------------------------------------- 4. throughput
section "4. training steps/s (batch 20, k = 1 and 50, eager) and L_5000 images/s (benchmarks/bench.py)"
if [ "$DEVICE" = cuda ]; then
    step 240 "bench.py" "$PY" benchmarks/bench.py --device cuda --batches 20 --ks 1,50 --no-estimators \
        --eval-images 1000 --seconds 2
else
    step 240 "bench.py" "$PY" benchmarks/bench.py --device cpu --batches 20 --ks 1,50 --no-estimators \
        --eval-images 1 --seconds 0.1 --gemm-sizes 256
fi

# ----------------------------------------------------------------------------- 5. side by side
RATES=$(mktemp -d)
section "5. side by side on $DEVICE: eager / compiled / bf16-mixed (/ members), one process each (bench.py --variants)"
if [ "$DEVICE" = cuda ]; then
    step 200 "bench.py --variants" "$PY" benchmarks/bench.py --variants --device cuda --rounds 1 --batches 20 \
        --ks 1,50 --seconds 2 --eval-images 1000 --json "$RATES/side.json"
else
    step 200 "bench.py --variants" "$PY" benchmarks/bench.py --variants --device cpu --rounds 1 --batches 20 \
        --ks 1 --only fp32,bf16-mixed --seconds 0.1 --eval-images 1 --json "$RATES/side.json"
fi

# ----------------------------------------------------------------------------- 5b. the compiled step
section "5b. the training step on $DEVICE: eager / compiled step (--compile step) / the same replayed as a CUDA graph"
if [ "$DEVICE" = cuda ]; then  # compiled twice (k = 1, 50; the graphed and called programs are one), then cached
    step 240 "bench.py --variants (compiled step)" "$PY" benchmarks/bench.py --variants --device cuda --rounds 1 \
        --batches 20 --ks 1,50 --only fp32,compiled-step-nograph,compiled-step --seconds 2 --no-eval \
        --json "$RATES/step.json"
else  # one program: inductor's C++ for the CPU (no CUDA graph there); a cold compile took over 200 s at load 10
    step 420 "bench.py --variants (compiled step)" "$PY" benchmarks/bench.py --variants --device cpu --rounds 1 \
        --batches 4 --ks 1 --only fp32,compiled-step --seconds 0.1 --no-eval --json "$RATES/step.json"
fi

# ----------------------------------------------------------------------------- 6. projection
section "6. projected wall time of the paper protocol on $DEVICE (benchmarks/projection.py)"
if [ "$DEVICE" = cuda ]; then  # the (layers, k) cells section 5 did not measure, eager and bf16-mixed
    step 100 "bench.py --variants (projection)" "$PY" benchmarks/bench.py --variants --device cuda --rounds 1 \
        --batches 20 --ks 1,5,50 --layers 2 --only fp32,bf16-mixed,compiled --seconds 1 --no-eval \
        --json "$RATES/two.json"
    step 60 "bench.py --variants (k = 5)" "$PY" benchmarks/bench.py --variants --device cuda --rounds 1 \
        --batches 20 --ks 5 --only fp32,bf16-mixed,compiled --seconds 1 --no-eval --json "$RATES/five.json"
else
    step 100 "bench.py --variants (projection)" "$PY" benchmarks/bench.py --variants --device cpu --rounds 1 \
        --batches 20 --ks 1 --layers 2 --only fp32 --seconds 0.1 --no-eval --json "$RATES/two.json"
fi
mapfile -t RATE_FILES < <(ls "$RATES"/*.json 2>/dev/null)
if [ ${#RATE_FILES[@]} -gt 0 ]; then
    step 30 "projection.py" "$PY" benchmarks/projection.py "${RATE_FILES[@]}"
else
    echo "!! no rates measured: no projection"
    FAILED+=("projection")
fi
rm -rf "$RATES"

section "done"
if [ ${#FAILED[@]} -gt 0 ]; then
    echo "FAILED: ${FAILED[*]}"
    exit 1
fi
echo "all steps passed"
