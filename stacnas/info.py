"""What this installation has: versions, and which kernel backends work here and why one does not (as the registry
of stacnas.fused says)."""
from __future__ import annotations

import importlib.metadata
import platform

import torch

from .fused import registry
from .names import KERNEL_BACKENDS, KERNEL_CHOICES


def _version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def collect() -> dict:
    gpu = torch.cuda.is_available()
    return {
        "versions": {
            "stacnas": _version("stacnas"),
            "python": platform.python_version(),
            "torch": torch.__version__,
            "torchvision": _version("torchvision"),
            "triton": _version("triton"),
            "cuda_runtime": torch.version.cuda,
        },
        "device": {"gpu": torch.cuda.get_device_name(0) if gpu else None, "cpu_threads": torch.get_num_threads()},
        "backends": registry.status(),
        "kernels": {"default": registry.default_backend()},
    }


def environment() -> dict:
    """What a run saves as environment.json: collect() and the platform."""
    return {**collect(), "platform": platform.platform()}


def render(info: dict) -> str:
    lines = ["stacnas " + str(info["versions"]["stacnas"])]
    lines += [f"  {k:<13} {v}" for k, v in info["versions"].items() if k != "stacnas"]
    lines.append(f"  {'gpu':<13} {info['device']['gpu'] or 'none'}")
    lines.append("kernel backends:")
    for name, b in info["backends"].items():
        lines.append(f"  {name:<8} {'yes' if b['available'] else 'no ':<4} {b['reason']}")
    lines.append("fused ops (backends implementing each; * works here):")
    for op, backends in registry.OPS.items():
        marked = [b + ("*" if info["backends"][b]["available"] else "") for b in backends]
        lines.append(f"  {op:<32} {' '.join(marked)}")
    lines.append(f"kernel choice: {info['kernels']['default']} (set STACNAS_KERNELS or --kernels to "
                 f"{'|'.join(KERNEL_CHOICES)})")
    return "\n".join(lines)


def verify() -> list[dict]:
    """The self-check (stacnas.fused.verify) of every backend that runs here, on its home device: one record per
    backend and op."""
    records = []
    for backend in KERNEL_BACKENDS:
        device = registry.home_device(backend)
        if backend != "torch" and registry.unavailable(backend, device) is None:
            records += registry.verification(backend, device).values()
    return records


def render_verification(records: list[dict]) -> str:
    from .fused.verify import TOLERANCE

    lines = [f"each op against PyTorch's on fixed inputs (largest error relative to the largest value; "
             f"passes at ≤ {TOLERANCE:g}):",
             f"  {'backend':<8} {'device':<8} {'op':<32} {'error':>9}  {'result':<6} {'ms':>7}"]
    for r in records:
        error = "raised" if r["raised"] else f"{r['error']:.1e}"
        lines.append(f"  {r['backend']:<8} {r['device']:<8} {r['op']:<32} {error:>9}  "
                     f"{'ok' if r['ok'] else 'FAILED':<6} {1000 * r['seconds']:7.1f}")
        if r["raised"]:
            lines.append(f"      {r['raised']}")
    if not records:
        lines.append("  no backend but torch runs here: nothing to check")
    return "\n".join(lines)
