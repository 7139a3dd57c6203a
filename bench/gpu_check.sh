#!/usr/bin/env bash
# The GPU path's proof in one command, for a GPU machine with its own python3 (torch with CUDA, triton, nvcc,
# ninja, pytest): no venv, no package installs, no network.
#
#     bash bench/gpu_check.sh [OUTDIR]          (make gpu-check; OUTDIR defaults to $OUT)
#
# Steps, by value, each under its own timeout (shortened to what is left of the whole 8-minute budget):
#   device    torch sees a CUDA device and triton imports (else the check stops here, failed)
#   triton    every Triton kernel test, compiled on the GPU (the default GPU path)
#   build     the extensions, built in place against the installed torch (the cuda backend)
#   bench     bench/gpu.py --check: fp32 (<= 1e-4 relative) and bf16 (<= 5e-2) at EditGAN's car configuration,
#             each kernel and end to end against the reference; the fp32 run rewrites
#             editgan_fast/ops/gpu_choice.json (the backend `auto` picks per operator on CUDA), copied to OUTDIR
#   cuda      every `gpu` and `nvcc` test (the CUDA kernels against the reference, their sm_80/sm_90 builds)
#   graphs    `apply` replayed from CUDA graphs equals eager `apply` (triton and cuda backends) and is faster
#   serve batching  the edit loop's batching on CUDA: K = 1, 4, 16 in-process clients of the service's renderer
#             (bench/serve.py --in-process: frames/s at K = 16 against K = 1, issue 12's target; no web stack)
#   bench     the same at a 1024 px face configuration (18 maps, 34 classes), fp32 and bf16
# A test that skips counts as a failure (EDITGAN_FAST_REQUIRE_GPU=1 turns the GPU tests' skips into failures,
# and pytest's summary line is checked for any other). OUTDIR/gpu-check.md, the report, is written as the steps
# finish (versions, device, each step's result and seconds, the benchmark tables); OUTDIR/gpu-check.log holds
# every step's output. Exit status 0 only when every step passed. PYTHON overrides the interpreter.
set -u
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
OUTDIR=${1:-${OUT:-}}
if [ -z "$OUTDIR" ]; then
    echo "usage: bash bench/gpu_check.sh OUTDIR (or set OUT)" >&2
    exit 2
fi
mkdir -p "$OUTDIR" || exit 2
OUTDIR=$(cd "$OUTDIR" && pwd)
PY=${PYTHON:-python3}
REPORT=$OUTDIR/gpu-check.md
LOG=$OUTDIR/gpu-check.log
BUDGET_S=${GPU_CHECK_BUDGET_S:-480}
T0=$(date +%s)
FAILED=()
SUMMARY=()
LINK=
export PYTHONUNBUFFERED=1 EDITGAN_FAST_REQUIRE_GPU=1
# The 1024 px face check's reference materializes a ~25 GiB feature stack: allowed on a large GPU.
export EDITGAN_FAST_REFERENCE_MEMORY_GB=${EDITGAN_FAST_REFERENCE_MEMORY_GB:-48}
cd "$ROOT" || exit 2

: >"$LOG"
{
    echo "# editgan-fast GPU check"
    echo
    echo "$(date -u '+%Y-%m-%d %H:%M:%S UTC'), commit $(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)"
    echo
} >"$REPORT"

versions() {
    "$PY" - <<'EOF'
import platform, shutil, subprocess
print(f"- python {platform.python_version()}")
try:
    import torch
    print(f"- torch {torch.__version__} (CUDA {torch.version.cuda})")
    if torch.cuda.is_available():
        p = torch.cuda.get_device_properties(0)
        print(f"- device: {p.name}, sm_{p.major}{p.minor}, {p.multi_processor_count} SMs, "
              f"{p.total_memory / 2**30:.0f} GiB")
    else:
        print("- device: none (torch.cuda.is_available() is False)")
except Exception as e:  # a broken install is reported, not fatal here: the device step fails on it
    print(f"- torch: not importable ({e})")
try:
    import triton
    print(f"- triton {triton.__version__}")
except Exception as e:
    print(f"- triton: not importable ({e})")
nvcc = shutil.which("nvcc")
out = subprocess.run([nvcc, "--version"], capture_output=True, text=True).stdout.strip().splitlines()[-1:] if nvcc else []
print(f"- nvcc: {out[0] if out else 'not found'}")
EOF
}
versions >>"$REPORT" 2>>"$LOG"
echo >>"$REPORT"

# step NAME TIMEOUT_S COMMAND...: runs it with its output in the log, appends its result to the report.
step() {
    local name=$1 limit=$2
    shift 2
    local left=$((BUDGET_S - ($(date +%s) - T0)))
    [ "$limit" -gt "$left" ] && limit=$left
    local start rc
    start=$(date +%s%N)
    echo "=== $name (timeout ${limit}s): $*" >>"$LOG"
    if [ "$limit" -le 0 ]; then
        rc=124
        echo "no time left in the ${BUDGET_S}s budget" >>"$LOG"
    else
        # bash -c: the steps are functions of this script (exported below), which timeout cannot run directly.
        timeout --kill-after=10 "$limit" bash -c '"$@"' step "$@" >>"$LOG" 2>&1
        rc=$?
    fi
    local ms result secs
    ms=$((($(date +%s%N) - start) / 1000000))
    secs=$((ms / 1000)).$((ms % 1000 / 100))
    case $rc in
        0) result=PASS ;;
        124 | 137) result="FAIL (timed out after ${limit}s)" ;;
        *) result="FAIL (exit $rc)" ;;
    esac
    [ "$limit" -le 0 ] && result="FAIL (not run: the ${BUDGET_S} s budget was spent)"
    [ $rc -eq 0 ] || FAILED+=("$name")
    SUMMARY+=("| $name | $result | $secs |")
    echo "### $name: $result, ${secs} s" >>"$REPORT"
    echo "=== $name: $result, ${secs} s" >>"$LOG"
    return $rc
}

# pytest_strict ARGS...: pytest that fails when anything was skipped, deselected-by-error or not run at all.
pytest_strict() {
    local tmp
    tmp=$(mktemp)
    "$PY" -m pytest -q -rs -p no:cacheprovider "$@" 2>&1 | tee "$tmp"
    local rc=${PIPESTATUS[0]}
    local last
    last=$(grep -E '^(=+ )?[0-9]+ (passed|failed|skipped|error)|no tests ran' "$tmp" | tail -1)
    rm -f "$tmp"
    if [ "$rc" -ne 0 ]; then return "$rc"; fi
    if [ -z "$last" ] || echo "$last" | grep -Eq 'skipped|xfailed|error|failed|no tests ran'; then
        echo "gpu_check: counted as a failure: $last"
        return 1
    fi
}

device_ready() {
    "$PY" - <<'EOF'
import sys
try:
    import torch
except Exception as e:
    sys.exit(f"gpu_check: torch is not importable: {e}")
if not torch.cuda.is_available():
    sys.exit("gpu_check: no CUDA device (torch.cuda.is_available() is False)")
try:
    import triton  # noqa: F401
except Exception as e:
    sys.exit(f"gpu_check: triton is not importable: {e}")
torch.ones(1, device="cuda").add_(1)
print(f"CUDA device {torch.cuda.get_device_name()} and triton are ready")
EOF
}

triton_tests() {
    export EDITGAN_FAST_TRITON_DEVICE=cuda  # the Triton kernel tests, compiled on the GPU, not interpreted
    pytest_strict tests/test_triton_kernels.py
}

bench() {
    local config=$1 dtype=$2
    shift 2
    EDITGAN_FAST_AUTOTUNE=1 "$PY" bench/gpu.py --check --config "$config" --dtype "$dtype" --reps 10 --markdown "$REPORT" "$@"
}

finish() {
    [ -n "$LINK" ] && rm -f "$LINK"
    {
        echo
        echo "## Summary"
        echo
        echo "| step | result | seconds |"
        echo "|---|---|---:|"
        printf '%s\n' "${SUMMARY[@]}"
        echo
        if [ ${#FAILED[@]} -eq 0 ]; then
            echo "**GPU check passed** in $(($(date +%s) - T0)) s."
        else
            echo "**GPU check FAILED** ($(IFS=,; echo "${FAILED[*]}")) after $(($(date +%s) - T0)) s; see gpu-check.log."
        fi
    } >>"$REPORT"
    echo "gpu_check: report in $REPORT"
    [ ${#FAILED[@]} -eq 0 ] && exit 0 || exit 1
}

# The tests force each modulated-conv tuning candidate themselves: first-call tuning would only cost compiles.
export EDITGAN_FAST_AUTOTUNE=0
export PY REPORT
export -f device_ready pytest_strict triton_tests bench
if ! step device 60 device_ready; then
    grep '^gpu_check:' "$LOG" | tail -1 >>"$REPORT"
    SUMMARY+=("| triton, build, cuda, graphs, bench | not run: no usable device | |")
    finish
fi
# The source tree has no install: editgan_fast.kernels lives in kernels/ (setup.py's package_dir). Where no
# editable install maps it, link it into the package for the run (removed at the end).
if ! "$PY" -c "import editgan_fast.kernels" >/dev/null 2>&1; then
    ln -s ../kernels "$ROOT/editgan_fast/kernels" && LINK=$ROOT/editgan_fast/kernels
fi
step triton 150 triton_tests
step build 180 "$PY" setup.py -q build_ext --inplace
# The car fp32 run also records which backend `auto` picks per operator (the table travels back in OUTDIR).
step "bench car fp32" 75 bench car float32 --record editgan_fast/ops/gpu_choice.json
cp editgan_fast/ops/gpu_choice.json "$OUTDIR/" 2>/dev/null
step "bench car bf16" 60 bench car bfloat16
step cuda 120 pytest_strict -m "gpu or nvcc" --deselect tests/test_triton_aot.py::test_kernels_on_a_real_gpu \
    tests/test_cuda_backend.py tests/test_cuda_compile.py tests/test_cuda_emulated.py tests/test_triton_aot.py
# Its own process: Triton compiled for the GPU (another test module may switch on the interpreter at import).
step graphs 90 pytest_strict -m gpu tests/test_editor_graphs.py
step "serve batching" 90 "$PY" bench/serve.py --in-process --device cuda --seconds 3 --rounds 1 --markdown "$REPORT"
step "bench face1024 fp32" 90 bench face1024 float32
step "bench face1024 bf16" 90 bench face1024 bfloat16
finish
