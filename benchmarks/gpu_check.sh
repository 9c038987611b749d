#!/usr/bin/env bash
# The GPU check, sized to a lent GPU machine (one H200, 16 cores, torch and triton preinstalled, no network, at most
# 10 minutes a command): from a bare copy of the repository, in one command of at most 8 minutes, the most valuable
# steps first, each bounded by `timeout` so that a failure or a hang in one leaves the others their time.
#
#   bash benchmarks/gpu_check.sh             on the GPU machine (as one `run` of the device tool)
#   bash benchmarks/gpu_check.sh --dry-run   anywhere: every step in order with its bound, on the CPU, tiny sizes,
#                                            the build left out and the test steps only collected (CI runs this)
#
# Results go to $OUT when it is set, else benchmarks/results/gpu-<date>/: check.txt (everything printed),
# summary.json (per step: command, bound, seconds, exit status), and the steps' own files (7 files in all).
set -uo pipefail
cd "$(dirname "$0")/.."
dry=0
[ "${1:-}" = "--dry-run" ] && dry=1
out="${OUT:-benchmarks/results/gpu-$(date +%Y-%m-%d)}"
[ $dry = 1 ] && out="${OUT:-$(mktemp -d)}"
mkdir -p "$out"
steps="$out/.steps.jsonl"
: > "$steps"
if [ $dry = 1 ]; then
  device=cpu
  collect="--collect-only"  # the selections are checked, not run: the CPU cases are for the test suite
  supernet_size="--channels 4 --layers 3 --image-size 8 --batch-size 2 --repeats 1 --no-peak-rss"
  dropin_size="--tiny --batch-size 2 --repeats 1"
else
  device=cuda
  collect=""
  unset TRITON_INTERPRET
  supernet_size="--batch-size 64 --repeats 5 --no-peak-rss"  # peak CUDA memory instead
  dropin_size="--batch-size 64 --repeats 5"
fi
cores=$(nproc 2>/dev/null || echo 4)

step() {  # step NAME BOUND_SECONDS COMMAND...: run it under its bound, record how it went
  local name=$1 bound=$2
  shift 2
  echo "== $name (at most ${bound} s): $*"
  local start=$SECONDS status
  if [ $dry = 1 ] && { [ "$name" = build ] || [ "$name" = supernet-fp16 ]; }; then
    echo "(dry run: not run; the build and fp16 need the GPU machine)"
    status=skipped
  else
    timeout --kill-after=10 "$bound" "$@"
    local rc=$?
    case $rc in 0) status=ok ;; 124|137) status=timeout ;; *) status="failed ($rc)" ;; esac
  fi
  python3 - "$name" "$bound" "$((SECONDS - start))" "$status" "$*" >> "$steps" <<'EOF'
import json, sys
name, bound, seconds, status, command = sys.argv[1:]
print(json.dumps({"step": name, "bound_s": int(bound), "seconds": int(seconds), "status": status, "command": command}))
EOF
  echo "-- $name: $status in $((SECONDS - start)) s"
}

{
  python3 -c "import sys, torch; print('python', sys.version.split()[0], '| torch', torch.__version__, '| CUDA', \
torch.version.cuda, '| GPU', torch.cuda.get_device_name(0) if torch.cuda.is_available() else None)"
  step build 150 env MAX_JOBS="$cores" TORCH_CUDA_ARCH_LIST=9.0 FORCE_CUDA=1 \
    python3 -m pip install -q --no-deps --no-build-isolation -e .
  step verify 25 python3 -m stacnas info --verify
  step kernels 60 python3 -m pytest -q -x $collect tests/test_fused.py -k "$device"
  step exactness 60 python3 -m pytest -q $collect -o addopts= tests/test_exactness.py \
    -k "$device and (darts-16px-batch8-seed0 or darts-32px or dropin_on_darts)"
  step precision 40 python3 -m pytest -q $collect tests/test_precision.py -k "$device"
  step dropin 30 python3 -m pytest -q $collect tests/test_dropin.py -k "$device"
  step supernet 30 python3 benchmarks/supernet.py --device "$device" $supernet_size --out "$out/supernet.json"
  step supernet-bf16 20 python3 benchmarks/supernet.py --device "$device" --amp bf16 $supernet_size \
    --out "$out/supernet-bf16.json"
  step supernet-fp16 20 python3 benchmarks/supernet.py --device "$device" --amp fp16 $supernet_size \
    --out "$out/supernet-fp16.json"
  step bandwidth 15 python3 -m pytest -q -p no:cacheprovider benchmarks/test_bandwidth.py \
    $([ $dry = 1 ] && echo --benchmark-disable) --benchmark-json "$out/bandwidth.json"
  step dropin-benchmark 30 python3 benchmarks/dropin.py --device "$device" $dropin_size \
    --codebases darts pcdarts nas-bench-201 --out "$out/dropin.json"
} 2>&1 | tee "$out/check.txt"

python3 - "$steps" "$out/summary.json" <<'EOF'
import json, sys
steps = [json.loads(line) for line in open(sys.argv[1])]
json.dump({"steps": steps, "bound_s": sum(s["bound_s"] for s in steps),
           "seconds": sum(s["seconds"] for s in steps)}, open(sys.argv[2], "w"), indent=2)
print(f"summary: {sum(s['status'] in ('ok', 'skipped') for s in steps)}/{len(steps)} steps ok, "
      f"{sum(s['seconds'] for s in steps)} s of at most {sum(s['bound_s'] for s in steps)} s; {sys.argv[2]}")
EOF
rm -f "$steps"
