"""Triton kernels of stacnas, installed as `stacnas.kernels` (this folder is mapped there by setup.py).

Kernels live here apart from the Python wrappers that choose and launch them (`stacnas.fused`). On a machine
without a GPU they run under the Triton interpreter when TRITON_INTERPRET=1 is set before triton is imported.
"""

# Names of the kernels this folder provides; `stacnas info` reads it.
TRITON_KERNELS: tuple[str, ...] = ("mixed_sum",)
