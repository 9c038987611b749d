"""What this installation has: versions and which kernel backends work here, and why one does not."""
from __future__ import annotations

import importlib.metadata
import os
import platform
import resource

import torch

from . import fused
from .kernels import TRITON_KERNELS


def _version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def _backend(available: bool, reason: str) -> dict:
    return {"available": available, "reason": reason}


def collect() -> dict:
    gpu = torch.cuda.is_available()
    ext_error = fused.extension_error()
    cpp = _backend(ext_error is None, "compiled C++ CPU kernels loaded" if ext_error is None else ext_error)
    if ext_error is not None:
        cuda = _backend(False, "the extension stacnas._C is not loaded")
    elif not fused.cuda_kernels_built():
        cuda = _backend(False, "built without CUDA kernels (rebuild with FORCE_CUDA=1 or TORCH_CUDA_ARCH_LIST set)")
    elif not gpu:
        cuda = _backend(False, "CUDA kernels are built but no GPU is visible")
    else:
        cuda = _backend(True, f"CUDA kernels built; GPU: {torch.cuda.get_device_name(0)}")
    triton_version = _version("triton")
    if triton_version is None:
        triton = _backend(False, "triton is not installed")
    elif not TRITON_KERNELS:
        triton = _backend(False, f"triton {triton_version} is installed; stacnas ships no Triton kernels yet")
    elif gpu:
        triton = _backend(True, f"triton {triton_version} on {torch.cuda.get_device_name(0)}: "
                                f"{', '.join(TRITON_KERNELS)}")
    elif os.environ.get("TRITON_INTERPRET") == "1":
        triton = _backend(True, f"triton {triton_version} in the CPU interpreter (TRITON_INTERPRET=1; slow): "
                                f"{', '.join(TRITON_KERNELS)}")
    else:
        triton = _backend(False, f"triton {triton_version} is installed but no GPU is visible "
                                 "(TRITON_INTERPRET=1 runs its kernels on the CPU, slowly)")
    return {
        "versions": {
            "stacnas": _version("stacnas"),
            "python": platform.python_version(),
            "torch": torch.__version__,
            "torchvision": _version("torchvision"),
            "triton": triton_version,
            "cuda_runtime": torch.version.cuda,
        },
        "device": {"gpu": torch.cuda.get_device_name(0) if gpu else None, "cpu_threads": torch.get_num_threads()},
        "backends": {"reference": _backend(True, "pure PyTorch, always available"),
                     "cpp": cpp, "cuda": cuda, "triton": triton},
        "kernels": {"default": fused.default_backend()},
    }


def render(info: dict) -> str:
    lines = ["stacnas " + str(info["versions"]["stacnas"])]
    lines += [f"  {k:<13} {v}" for k, v in info["versions"].items() if k != "stacnas"]
    lines.append(f"  {'gpu':<13} {info['device']['gpu'] or 'none'}")
    lines.append("kernel backends:")
    for name, b in info["backends"].items():
        lines.append(f"  {name:<10} {'yes' if b['available'] else 'no ':<4} {b['reason']}")
    lines.append(f"kernel choice: {info['kernels']['default']} (set STACNAS_KERNELS or --kernels to "
                 "auto|reference|cpp|cuda|triton)")
    return "\n".join(lines)


def peak_memory() -> dict:
    """Peak resident memory of this process (and peak CUDA memory allocated, when CUDA was used), in MiB."""
    mem = {"peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        mem["peak_cuda_mib"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
    return mem
