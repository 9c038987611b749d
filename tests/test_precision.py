"""Mixed precision: under bfloat16 autocast (and float16 on CUDA) the lean and recompute supernets are no less
accurate than the reference under the same autocast (each measured against float64), the search runs with
`--amp bf16`, and the float16 gradient scaler scales, unscales and skips overflowing steps in every step function."""
import copy
import json

import pytest
import torch
import torch.nn.functional as F

from stacnas import fused
from stacnas.nn import Supernet
from stacnas.runtime.distributed import Context
from stacnas.search import SearchConfig, run_search, steps
from stacnas.spaces import BUILTIN_SPACES

BACKENDS = fused.available_backends("cpu")


def _grads(model, x, y, amp: torch.dtype | None):
    """[logits, every parameter's gradient] of one forward+backward (under autocast to amp), in float64."""
    torch.manual_seed(1)  # `noise` draws from the global RNG
    with torch.autocast(x.device.type, dtype=amp or torch.bfloat16, enabled=amp is not None):
        logits = model(x)
    F.cross_entropy(logits.to(torch.promote_types(logits.dtype, torch.float32)), y).backward()
    return [logits.detach().double()] + [None if p.grad is None else p.grad.double() for p in model.parameters()]


def _errors(results, truth):
    """Norm-relative error of each tensor against float64, with a floor of 1e-6 of the tensor's norm."""
    return [None if t is None else max((r - t).norm().item(), 1e-6 * t.norm().item()) / max(t.norm().item(), 1e-30)
            for r, t in zip(results, truth)]


# every space and mode on the CPU backends; the interpreted Triton kernels in lean on the DARTS space (recompute calls
# the same kernel, once per term), on a smaller network: 3 cells, 8×8 (the interpreter runs each kernel program in
# Python: at 5 cells, 16×16 it took two and a half minutes; at C=4 single tensors scatter past the 3× bound)
SPACES = ("darts", "s1", "s2", "s3", "s4")
CASES = [pytest.param(space, mode, backend, "cpu", torch.bfloat16, id=f"{space}-{mode}-{backend}-cpu-bf16")
         for backend in BACKENDS for mode in ("lean", "recompute")
         for space in SPACES if backend != "triton" or (space, mode) == ("darts", "lean")]
# on a GPU (benchmarks/gpu_check.sh): the CUDA kernels in both precisions autocast offers there
CASES += [pytest.param(space, mode, "cuda", "cuda", dtype, id=f"{space}-{mode}-cuda-cuda-{name}")
          for dtype, name in ((torch.bfloat16, "bf16"), (torch.float16, "fp16")) for mode in ("lean", "recompute")
          for space in SPACES if "cuda" in (fused.available_backends("cuda") if torch.cuda.is_available() else [])]


@pytest.mark.parametrize("space, mode, backend, device, dtype", CASES)
def test_half_precision_autocast_no_worse_than_reference(space, mode, backend, device, dtype):
    """bfloat16 keeps 8 bits (float16 11): two computations rounded differently land at errors of one size, but which
    is smaller varies tensor by tensor. So: typically no worse (median ratio ≤ 1.2) and never far worse (every tensor
    ≤ 3×)."""
    torch.manual_seed(0)
    layers, size = (3, 8) if backend == "triton" else (5, 16)
    base = Supernet(BUILTIN_SPACES[space], C=8, layers=layers, num_classes=6, mode="reference").to(device)
    with torch.no_grad():
        for alpha in base.alphas():
            alpha.normal_()
    x, y = torch.randn(8, 3, size, size).to(device), torch.randint(0, 6, (8,)).to(device)
    truth = _grads(copy.deepcopy(base).double(), x.double(), y, amp=None)
    reference = _errors(_grads(copy.deepcopy(base), x, y, amp=dtype), truth)
    ours = _errors(_grads(copy.deepcopy(base).set_mode(mode, backend), x, y, amp=dtype), truth)
    assert reference[0] > 1e-4  # half precision was used: float32 alone would be ~1e-7
    names = ["logits"] + [name for name, _ in base.named_parameters()]
    ratios = sorted((e / r, name) for name, e, r in zip(names, ours, reference) if e is not None)
    assert ratios[len(ratios) // 2][0] <= 1.2, ratios[len(ratios) // 2]
    assert ratios[-1][0] <= 3.0, ratios[-3:]


def _tiny_search(tmp_path, name, **options):
    cfg = dict(epochs=1, darts_epochs=1, limit=64, channels=4, stage1_layers=3, stage2_layers=4, darts_layers=3,
               batch_size=32, device="cpu", report=False, **options)
    return run_search(SearchConfig(**cfg), str(tmp_path / name))


@pytest.mark.parametrize("method", ["stacnas", "darts"])  # one-level; second order
def test_search_runs_under_bf16(tmp_path, method):
    _tiny_search(tmp_path, "bf16", method=method, amp="bf16")
    _tiny_search(tmp_path, "fp32", method=method)
    assert json.loads((tmp_path / "bf16" / "config.json").read_text())["amp"] == "bf16"
    # the first stage after its epoch, in both precisions: the same search to bfloat16's precision (α moved alike),
    # but not bit-equal (bfloat16 was really used)
    first = [json.loads((tmp_path / name / "metrics.jsonl").read_text().splitlines()[0]) for name in ("bf16", "fp32")]
    assert first[0]["stage"] == first[1]["stage"]
    for cell_type in ("normal", "reduce"):
        ours, plain = (torch.tensor(record["alpha_softmax"][cell_type]) for record in first)
        assert torch.isfinite(ours).all()
        assert not torch.equal(ours, plain)
        assert torch.allclose(ours, plain, atol=2e-3), (ours - plain).abs().max()


def _fp16_model():
    torch.manual_seed(0)
    return Supernet(BUILTIN_SPACES["darts"], C=4, layers=3, num_classes=5, mode="lean", kernels="torch")


def _optimizers(model):
    # SGD for α too: Adam's first step is lr·sign(g) whatever the scale, so it would not show a scale left in the
    # gradients, and it turns an α gradient that underflows in the unscaled float16 run into a full step's difference
    return torch.optim.SGD(model.weights(), 0.05, momentum=0.9), torch.optim.SGD(model.alphas(), 3e-3)


def _precision(scale: float | None):
    """float16 autocast on the CPU, with a scaler of this initial scale (None: disabled)."""
    scaler = torch.amp.GradScaler("cpu", init_scale=scale or 1.0, enabled=scale is not None)
    return steps.Precision(lambda: torch.autocast("cpu", dtype=torch.float16), scaler)


def _run_step(kind, model, amp):
    torch.manual_seed(3)
    x, y = torch.randn(4, 3, 8, 8), torch.randint(0, 5, (4,))
    w_opt, a_opt = _optimizers(model)
    ctx = Context()
    if kind == "joint":
        steps.joint_step(model, x, y, w_opt, a_opt, 5.0, ctx, amp)
    elif kind == "weights":
        steps.weight_step(model, x, y, w_opt, 5.0, ctx, amp)
    else:
        steps.alpha_step_first_order(model, x, y, a_opt, ctx, amp)
    amp.scaler.update()


@pytest.mark.parametrize("kind", ["joint", "weights", "alpha"])
def test_fp16_scaler_unscales_before_the_step_and_skips_overflow(kind):
    """Two scales, 2^8 and 2^12, take the same step: a power of two scales float16 gradients exactly (both are large
    enough that none underflows, as some do unscaled, the node states being float16 too) and is divided out before
    the step; a scale left in would make the steps differ 16×."""
    low, high = _fp16_model(), _fp16_model()
    start = [p.detach().clone() for p in high.parameters()]
    amps = [_precision(2.0 ** 8), _precision(2.0 ** 12)]
    _run_step(kind, low, amps[0])
    _run_step(kind, high, amps[1])
    moved = [not torch.equal(p, p0) for p, p0 in zip(high.parameters(), start)]
    assert any(moved)
    for p, q, p0 in zip(high.parameters(), low.parameters(), start):
        assert torch.allclose(p - p0, q - p0, rtol=1e-3, atol=1e-7), (p - q).abs().max()
    # no overflow: each scale is kept (grown only after 2000 steps)
    assert [amp.scaler.get_scale() for amp in amps] == [2.0 ** 8, 2.0 ** 12]

    overflowing = _fp16_model()
    amp = _precision(2.0 ** 60)  # float16 overflows: the step is skipped and the scale backs off
    _run_step(kind, overflowing, amp)
    assert all(torch.equal(p, p0) for p, p0 in zip(overflowing.parameters(), start))
    assert amp.scaler.get_scale() == 2.0 ** 59
