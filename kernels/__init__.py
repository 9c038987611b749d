"""Triton kernels of stacnas and their launchers, installed as `stacnas.kernels` (setup.py maps this folder there).

They import nothing of stacnas: `stacnas.fused.triton_backend` registers the launchers as custom ops and
`stacnas.fused` gives them autograd. On a machine without a GPU they run under the Triton interpreter when
TRITON_INTERPRET=1 is set before triton is imported.
"""
