"""The names of stacnas' choices, each written once: every module, flag and check takes them from here."""
from __future__ import annotations

# The two cell types of a DARTS network; α, spaces and genotypes hold one entry per type, in this order.
CELL_TYPES = ("normal", "reduce")

# How a supernet computes its mixed edges (stacnas.nn.modes): `reference` is DARTS' plain sum(w * op(x)), the
# oracle; `lean` fuses each node into one kernel call; `recompute` keeps only node inputs and recomputes in backward.
MEMORY_MODES = ("reference", "lean", "recompute")
DEFAULT_MEMORY_MODE = "lean"

# Who computes the fused ops (stacnas.fused.registry): `torch` is pure PyTorch (ATen ops only), the others are
# stacnas' kernels. `auto` picks per device.
KERNEL_BACKENDS = ("torch", "cpp", "cuda", "triton")
KERNEL_CHOICES = ("auto", *KERNEL_BACKENDS)

# Search methods and optimization orders (stacnas.search).
METHODS = ("stacnas", "darts", "random")
ORDERS = ("auto", "one-level", "first", "second")

# How operator clustering compares op outputs (stacnas.search.clustering): correlation centred per op or per
# feature position, or linear CKA over channels.
CLUSTER_STATISTICS = ("element", "sample", "cka", "gradient")
SIMILARITY_NAME = {"element": "|corr|", "sample": "|corr|", "cka": "CKA",
                   "gradient": "|corr| of α-gradients"}  # in reports and figures

# Mixed precision (`--amp`, stacnas.runtime.precision): autocast to bfloat16 or float16 (fp16 with a gradient scaler).
AMP_MODES = ("none", "bf16", "fp16")
