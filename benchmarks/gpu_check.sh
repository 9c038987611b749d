#!/usr/bin/env bash
# The GPU check: build the CUDA extension, run every backend's self-check (stacnas info --verify), the exactness
# sweep against float64 (tests/test_exactness.py, on CUDA too) and the bf16 test, the kernel tests on CUDA (Triton
# compiled, not interpreted; fp16 and bf16 included), time the kernels (benchmarks/: every backend of the registry,
# the fused sum against the copy bandwidth) and the supernet modes against each other. Writes everything to
# benchmarks/results/gpu-<gpu>-<date>.* (or $RESULTS_DIR); commit those files.
set -euo pipefail
cd "$(dirname "$0")/.."
unset TRITON_INTERPRET
gpu=$(python3 -c "import torch; print(torch.cuda.get_device_name(0).replace(' ', '_'))")
stem="${RESULTS_DIR:-benchmarks/results}/gpu-${gpu}-$(date +%Y-%m-%d)"
mkdir -p "$(dirname "$stem")"
{
  echo "== build"
  FORCE_CUDA=1 python3 -m pip install -q --no-build-isolation -e . 2>&1 | grep -v "root' user" || true
  python3 -m stacnas info
  echo "== self-check of every backend (each op against PyTorch's; also run on a backend's first use)"
  python3 -m stacnas info --verify || echo "SELF-CHECK FAILED: the failing ops fall back to the next backend"
  echo "== exactness at realistic sizes against float64 (CPU and CUDA, the larger cases too) and under bf16 autocast"
  python3 -m pytest -q -o addopts= tests/test_exactness.py tests/test_precision.py
  echo "== kernel tests on CUDA"
  python3 -m pytest -q tests/test_fused.py tests/test_modes.py tests/test_dropin.py
  echo "== kernel benchmarks"
  python3 -m pytest -q benchmarks --benchmark-json "$stem-kernels.json"
  echo "== supernet modes (batch 64)"
  python3 benchmarks/supernet.py --batch-size 64 --repeats 10 --out "$stem-supernet.json"
} 2>&1 | tee "$stem.txt"
