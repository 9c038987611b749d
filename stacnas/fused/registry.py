"""Which backend computes which fused op, where each backend can run and why it cannot: the one place that the
dispatcher, `stacnas info`, the benchmarks and the tests ask.

    torch   PyTorch's own ops: the oracle the others are tested against; runs on any device
    cpp     the C++ CPU kernels of the extension stacnas._C (csrc/fused_ops.cpp)
    cuda    the CUDA kernels of stacnas._C (csrc/cuda/), when it was built with them
    triton  the Triton kernels of stacnas.kernels (kernels/): on GPUs, or on CPUs under TRITON_INTERPRET=1

`auto` takes the compiled kernels of the tensors' device, else Triton on a GPU, else torch. A backend that does not
implement an op (OPS says who implements what) leaves that op to the first backend of the device's `auto` order
that does.
"""
from __future__ import annotations

import functools
import importlib
import os

import torch

from ..errors import UsageError, warn
from ..names import KERNEL_BACKENDS, KERNEL_CHOICES

OPS = {
    "mixed_sum_into": ("torch", "cpp", "cuda", "triton"),
    "mixed_sum_backward": ("torch", "cpp", "cuda", "triton"),
    "batch_norm_stats": ("torch", "cpp", "cuda"),
    "batch_norm_relu_backward": ("torch", "cpp", "cuda"),
    "max_pool2d_backward_from_output": ("torch", "cpp", "cuda"),
    "depthwise_conv2d_weight_grad": ("torch", "cpp"),
    "conv_chain_backward": ("torch", "cpp", "cuda"),
}
_MODULES = {"torch": "torch_backend", "cpp": "compiled_backend", "cuda": "compiled_backend",
            "triton": "triton_backend"}
_AUTO_ORDER = {"cpu": ("cpp", "torch"), "cuda": ("cuda", "triton", "torch")}


_LOADED = {}  # backend -> its module, imported on first use
_VERIFIED = {}  # (backend, device) -> {op: its self-check's record} (stacnas.fused.verify), once per process


def _module(backend: str):
    if backend not in _LOADED:
        _LOADED[backend] = importlib.import_module(f"stacnas.fused.{_MODULES[backend]}")
    return _LOADED[backend]


@functools.cache
def _triton_version() -> str | None:
    try:
        import triton
    except ImportError:
        return None
    return triton.__version__


def unavailable(backend: str, device: torch.device) -> str | None:
    """None when `backend` can run on tensors of `device`, else why not."""
    if backend == "torch":
        return None
    return _triton_unavailable(device) if backend == "triton" else _compiled_unavailable(backend, device)


def _compiled_unavailable(backend: str, device: torch.device) -> str | None:
    compiled = _module("cpp")
    if compiled.LOAD_ERROR is not None:
        return compiled.LOAD_ERROR
    if backend == "cuda" and not compiled.cuda_built():
        return "stacnas._C was built without CUDA kernels; rebuild with FORCE_CUDA=1 or TORCH_CUDA_ARCH_LIST set"
    if (backend == "cuda") != (device.type == "cuda"):
        return f"kernel backend {backend!r} cannot run on {device.type} tensors"
    if device.type == "cuda" and not torch.cuda.is_available():
        return "the CUDA kernels are built, but no GPU is visible"
    return None


def _triton_unavailable(device: torch.device) -> str | None:
    version = _triton_version()
    if version is None:
        return "triton is not installed"
    if device.type == "cuda":
        return None if torch.cuda.is_available() else f"triton {version} is installed, but no GPU is visible"
    if device.type == "cpu":
        if os.environ.get("TRITON_INTERPRET") == "1":
            return None
        return (f"triton {version} runs on CPU tensors only in its interpreter: set TRITON_INTERPRET=1 before "
                "starting Python")
    return f"Triton kernels do not run on {device.type} tensors"


def interpreted(backend: str, device: torch.device) -> bool:
    """Whether `backend` runs in an interpreter on `device` (Triton on CPUs): correct, but far too slow to time."""
    return backend == "triton" and device.type == "cpu"


def available_backends(device: torch.device | str) -> list[str]:
    """The backends that can run on tensors of `device`, in KERNEL_BACKENDS order."""
    device = torch.device(device)
    return [b for b in KERNEL_BACKENDS if unavailable(b, device) is None]


def op_backends(op: str, device: torch.device | str) -> list[str]:
    """The backends that implement `op` and can run on `device`."""
    return [b for b in available_backends(device) if b in OPS[op]]


def home_device(backend: str) -> torch.device:
    """The device a backend is meant for: cuda for cuda, and for triton where a GPU is visible; else the CPU."""
    gpu = backend == "cuda" or (backend == "triton" and torch.cuda.is_available())
    return torch.device("cuda" if gpu else "cpu")


def status() -> dict[str, dict]:
    """Per backend: whether it works on its home device here, why (not), and the ops it implements."""
    report = {}
    for backend in KERNEL_BACKENDS:
        device = home_device(backend)
        reason = unavailable(backend, device)
        report[backend] = {"available": reason is None, "reason": reason or _why_available(backend, device),
                           "ops": [op for op, backends in OPS.items() if backend in backends]}
    return report


def _why_available(backend: str, device: torch.device) -> str:
    if backend == "torch":
        return "PyTorch's own ops, on any device: the oracle the other backends are tested against"
    if backend == "cpp":
        return "compiled C++ CPU kernels loaded"
    if backend == "cuda":
        return f"CUDA kernels built; GPU: {torch.cuda.get_device_name(device)}"
    if interpreted(backend, device):
        return f"triton {_triton_version()} in the CPU interpreter (TRITON_INTERPRET=1; slow)"
    return f"triton {_triton_version()} on {torch.cuda.get_device_name(device)}"


def default_backend() -> str:
    """The backend STACNAS_KERNELS asks for instead of the automatic choice (auto when unset)."""
    backend = os.environ.get("STACNAS_KERNELS", "auto")
    if backend not in KERNEL_CHOICES:
        raise UsageError(f"STACNAS_KERNELS={backend!r} is not one of {', '.join(KERNEL_CHOICES)}")
    return backend


def constant_under_compile(fn):
    """torch.compiler.assume_constant_result(fn) without importing torch._dynamo, which that call does (1.3 s at
    import; a process that builds no optimizer, `stacnas --help` or `info`, never needs it): the mark it sets
    (tests/test_fused.py checks that it still is the one). Under torch.compile, dynamo then runs fn at trace time
    and keeps its result (it cannot trace the imports these functions make)."""
    fn._dynamo_marked_constant = True
    return fn


@constant_under_compile
def resolve_backend(backend: str | None, device: torch.device) -> str:
    """The concrete backend for tensors on `device`: `backend`, or for None and auto the one STACNAS_KERNELS names,
    else the first usable one of the device's auto order. A backend that cannot run there is an error saying why."""
    if backend in (None, "auto"):
        backend = default_backend()
    if backend == "auto":
        return next((b for b in _AUTO_ORDER.get(device.type, ()) if unavailable(b, device) is None), "torch")
    if backend not in KERNEL_BACKENDS:
        raise UsageError(f"unknown kernel backend {backend!r}; choose one of {', '.join(KERNEL_CHOICES)}")
    if (reason := unavailable(backend, device)) is not None:
        raise UsageError(f"kernel backend {backend!r}: {reason}")
    return backend


def verification(backend: str, device: torch.device) -> dict[str, dict]:
    """{op: record} of `backend`'s self-check on `device` (stacnas.fused.verify), run the first time it is asked
    for; every op that failed it is reported once, here."""
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    key = (backend, str(device))
    if key not in _VERIFIED:
        from . import verify

        ops = [op for op, backends in OPS.items() if backend in backends]
        # the first use may come inside an autocast region: the self-check compares in its own dtypes, not autocast's
        with torch.autocast(device.type, enabled=False):
            _VERIFIED[key] = {r["op"]: r for r in verify.verify_backend(backend, _module(backend), ops, device)}
        for r in _VERIFIED[key].values():
            if not r["ok"]:
                warn(f"kernel backend {backend!r} on {device}: {r['op']} " + (
                    f"raised {r['raised']}" if r["raised"] else f"differs from PyTorch's by {r['error']:.2g} "
                                                                "(relative) on its self-check")
                     + "; the next backend computes it instead")
    return _VERIFIED[key]


def _trusted(op: str, backend: str, device: torch.device) -> bool:
    return backend == "torch" or verification(backend, device)[op]["ok"]


@constant_under_compile
def provider(op: str, backend: str, device: torch.device) -> str:
    """The backend computing `op` when `backend` (concrete) is chosen for `device`: `backend` itself, or when it does
    not implement `op` or failed its self-check for it, the first backend of the device's auto order that does and
    runs there."""
    order = (backend, *_AUTO_ORDER.get(device.type, ()), "torch")
    backend = next(b for b in order if b in OPS[op] and unavailable(b, device) is None and _trusted(op, b, device))
    _module(backend)  # imported now, not while torch.compile traces
    return backend


def implementation(op: str, backend: str, device: torch.device):
    """The function computing `op` for the concrete `backend` on `device` (see provider)."""
    return getattr(_LOADED[provider(op, backend, device)], op)
