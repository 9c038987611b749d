import os

import torch

# Without a GPU the Triton kernels run in Triton's CPU interpreter, which must be chosen before triton is imported
# (torchvision, and so stacnas, import it).
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
