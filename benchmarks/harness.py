"""The one harness of the kernel benchmarks: pytest-benchmark, the same workload per backend side by side in one
session, each workload a group (its table gives each row's ratio to the fastest of the group), one JSON format.

    python -m pytest benchmarks --benchmark-json=FILE.json

Backends come from stacnas' registry: every backend that runs on this machine's device (the GPU when one is
visible, else the CPU), except Triton in its CPU interpreter, which is correct but far too slow to time.
"""
import torch

from stacnas import fused
from stacnas.fused import registry

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")


def kernel_backends(op: str) -> list[str]:
    """The backends timed for `op` on DEVICE."""
    return [b for b in fused.op_backends(op, DEVICE) if not registry.interpreted(b, DEVICE)]
