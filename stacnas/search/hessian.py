"""RobustDARTS' collapse indicator (Zela et al., ICLR 2020): the largest eigenvalue of the Hessian of α's loss with
respect to α (normal and reduce together), on a fixed, seeded set of images.

The loss is the one α descends: bi-level search, the validation loss on validation images; one-level (StacNAS), the
training loss on training images. The images are drawn once, by a seeded permutation, with their augmentation drawn
from that seed too. Lanczos with full reorthogonalization (`steps` Hessian-vector products) gives the largest Ritz
value. Each product H v is exact, by double backward (∇α ⟨∇α L, v⟩, as RobustDARTS computes its Hessian), with the
supernet in its reference mode for the while (the fused modes compute the same function but their kernels have no
second derivative). Finite differences of the α-gradient, as DARTS' unrolled step takes its second-order term, do
not measure it: ReLU and max-pool make the gradient piecewise smooth, and a step of r = 0.01/‖v‖ crosses enough of
their kinks to be off by 5× (measured in float64 on the small supernet of tests/test_hessian.py: only r ≤ 1e-5
converges, below float32's reach).

It changes nothing of the search: no gradient is accumulated, the BNs normalize with the batch statistics as in a
search step but update no running statistics, every loss draws its random numbers (`noise`) from a fixed seed, the
search's own RNG state untouched, and the memory mode is restored. It runs outside any autocast, in the parameters'
dtype. The first-order graphs of all the batches are kept for the Lanczos steps (each step is one backward through
them instead of a forward and two backwards), so it needs the reference mode's memory for that many batches, with
their second-order graphs.
"""
from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F

from ..nn.batchnorm import frozen_running_stats


def fixed_batches(dataset, batches: int, batch_size: int, seed: int, device) -> list[tuple]:
    """`batches` batches of (images, labels) from dataset, drawn by a permutation seeded by `seed`, their random
    augmentation too, without touching the global RNG."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        order = torch.randperm(len(dataset))[:batches * batch_size].tolist()
        samples = [dataset[i] for i in order]
    found = []
    for start in range(0, len(samples), batch_size):
        chunk = samples[start:start + batch_size]
        found.append((torch.stack([x for x, _ in chunk]).to(device), torch.tensor([y for _, y in chunk]).to(device)))
    return found


def _dot(a, b) -> torch.Tensor:
    return sum((x * y).sum() for x, y in zip(a, b))


@contextlib.contextmanager
def _reference_mode(model):
    """The supernet in its reference mode for the while (its memory mode and kernels put back after)."""
    mode, kernels = model.mode, model.kernels
    model.set_mode("reference")
    try:
        yield
    finally:
        model.set_mode(mode, kernels)


@contextlib.contextmanager
def hessian_operator(model, batches, seed: int):
    """v ↦ H v, H the Hessian of the mean loss over `batches` w.r.t. the model's α, by double backward. Each batch's
    forward and first backward (with its graph) run once, drawing from a seeded RNG; every product is then one more
    backward through those graphs, held until the context ends."""
    alphas = list(model.alphas())
    devices = [batches[0][0].device] if batches[0][0].device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices), frozen_running_stats(model), _reference_mode(model):
        torch.manual_seed(seed)
        gradients = []
        for x, y in batches:
            logits = model(x)
            loss = F.cross_entropy(logits.to(torch.promote_types(logits.dtype, torch.float32)), y) / len(batches)
            gradients.append(torch.autograd.grad(loss, alphas, create_graph=True))

        def product(v: list[torch.Tensor]) -> list[torch.Tensor]:
            total = [torch.zeros_like(a) for a in alphas]
            for grads in gradients:
                for t, h in zip(total, torch.autograd.grad(_dot(grads, v), alphas, retain_graph=True)):
                    t.add_(h)
            return total

        yield product


def largest_eigenvalue(model, batches, steps: int = 20, seed: int = 0) -> float:
    """The largest eigenvalue of ∇²α L at the model's α, by `steps` Lanczos iterations from a seeded start."""
    alphas = list(model.alphas())
    generator = torch.Generator().manual_seed(seed)
    v = [torch.randn(a.shape, generator=generator, dtype=a.dtype).to(a.device) for a in alphas]
    norm = _dot(v, v).sqrt()
    basis, diagonal, off_diagonal = [[t / norm for t in v]], [], []
    with torch.autocast(alphas[0].device.type, enabled=False), hessian_operator(model, batches, seed) as product:
        for i in range(steps):
            w = product(basis[-1])
            diagonal.append(float(_dot(w, basis[-1])))
            for q in basis:  # full reorthogonalization: float rounding would otherwise bring back found directions
                c = _dot(w, q)
                w = [wi - c * qi for wi, qi in zip(w, q)]
            beta = float(_dot(w, w).sqrt())
            if i == steps - 1 or beta < 1e-10 * max(abs(d) for d in diagonal):
                break
            off_diagonal.append(beta)
            basis.append([t / beta for t in w])
    n = len(diagonal)
    tridiagonal = torch.diag(torch.tensor(diagonal, dtype=torch.float64))
    if n > 1:
        off = torch.tensor(off_diagonal, dtype=torch.float64)  # n - 1 of them: the last step appends none
        tridiagonal += torch.diag(off, 1) + torch.diag(off, -1)
    return float(torch.linalg.eigvalsh(tridiagonal).max())
