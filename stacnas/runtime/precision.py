"""Mixed precision (`--amp`), the same for searches and trainings: the forward pass under torch.autocast to
bfloat16 or float16, and for float16 a gradient scaler (its small exponent range underflows gradients otherwise)."""
from __future__ import annotations

import contextlib

import torch

from ..errors import UsageError

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def check_amp(amp: str, device: torch.device) -> None:
    if amp == "fp16" and device.type != "cuda":
        raise UsageError("--amp fp16 needs a CUDA device; use --amp bf16 on the CPU")


def autocast(amp: str, device: torch.device):
    """The context the forward pass runs in (a no-op for `none`)."""
    if amp == "none":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=DTYPES[amp])


def grad_scaler(amp: str, device: torch.device) -> torch.amp.GradScaler:
    """Enabled for fp16 only; disabled, its scale/unscale_/step/update are the plain operations."""
    return torch.amp.GradScaler(device.type, enabled=amp == "fp16")
