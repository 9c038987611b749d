"""Every backend of every fused op against the PyTorch reference: random data, odd shapes, non-contiguous inputs,
fp64 gradcheck, opcheck. The backends come from the registry (torchvision's cpu_and_cuda(), over backends): here the
C++ kernels and Triton in its interpreter on the CPU; the CUDA kernels and compiled Triton where a GPU is visible."""
import os

import pytest
import torch
import torch.nn.functional as F

from stacnas import fused
from stacnas.errors import UsageError
from stacnas.fused import compiled_backend, registry

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
FLAGS = {"plain": [False, False, False], "mixed": [True, False, True], "all": [True, True, True]}
# Odd shapes; the last spans many elements per channel. The Triton interpreter runs numpy per program: small ones.
SHAPES = [(5, 3), (3, 5, 7), (2, 17, 9, 11), (3, 7, 61, 67)]
INTERPRETED_SHAPES = SHAPES[:3]


def backends(op: str, with_torch: bool = True):
    """(backend, device) for every backend implementing `op` that runs here. with_torch=False leaves out the torch
    backend where it is the very computation the test compares against."""
    return [pytest.param(b, d, id=f"{b}-{d}") for d in DEVICES for b in fused.op_backends(op, d)
            if with_torch or b != "torch"]


def cases(op: str, shapes, with_torch: bool = True):
    """backends(op) × shapes, small shapes only for an interpreted backend."""
    return [pytest.param(*p.values, shape, id=f"{p.id}-{'x'.join(map(str, shape))}") for p in backends(op, with_torch)
            for shape in shapes if shape in INTERPRETED_SHAPES or not registry.interpreted(p.values[0],
                                                                                           torch.device(p.values[1]))]


def custom_op(backend: str, name: str):
    """The registered custom op of a kernel backend (what opcheck checks)."""
    return getattr(torch.ops.stacnas_triton if backend == "triton" else torch.ops.stacnas, name).default


def _inputs(shape, K, dtype, device, seed=0, contiguous=True):
    g = torch.Generator().manual_seed(seed)
    if contiguous:
        xs = [torch.randn(shape, generator=g, dtype=torch.float64) * 3 + 1 for _ in range(K)]
    else:  # same shape, transposed storage
        xs = [(torch.randn(tuple(reversed(shape)), generator=g, dtype=torch.float64) * 3 + 1).permute(
            *reversed(range(len(shape)))) for _ in range(K)]
    w = torch.randn(K, generator=g, dtype=torch.float64)
    C = shape[1]
    running = (torch.randn(K, C, generator=g, dtype=torch.float64), torch.rand(K, C, generator=g, dtype=torch.float64)
               + 0.5)
    to = lambda t: t.to(device, dtype)  # noqa: E731
    return [to(x).requires_grad_() for x in xs], to(w).requires_grad_(), tuple(to(r) for r in running)


@pytest.mark.parametrize("backend, device, shape", cases("mixed_sum_into", SHAPES))
@pytest.mark.parametrize("flags", sorted(FLAGS))
@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("contiguous", [True, False])
def test_matches_reference_fp32(backend, device, shape, flags, training, contiguous):
    normalize = FLAGS[flags]
    xs, w, (rm, rv) = _inputs(shape, len(normalize), torch.float32, device, contiguous=contiguous)
    args = (normalize, rm, rv, training, 1e-5)
    y, mean, var = fused.mixed_sum(xs, w, *args, backend=backend)
    y_ref, mean_ref, var_ref = fused.reference_mixed_sum(xs, w, *args)
    torch.testing.assert_close(y, y_ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(mean, mean_ref, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(var, var_ref, rtol=1e-5, atol=1e-6)
    grad = torch.randn_like(y)
    ours = torch.autograd.grad(y, [*xs, w], grad)
    theirs = torch.autograd.grad(y_ref, [*xs, w], grad)
    truth = torch.autograd.grad(fused.reference_mixed_sum([x.double() for x in xs], w.double(), normalize,
                                                          rm.double(), rv.double(), training, 1e-5)[0],
                                [*xs, w], grad.double())
    for name, o, t, e in zip([f"x{k}" for k in range(len(xs))] + ["w"], ours, theirs, truth):
        # against the fp64 truth: within 1e-5 of the largest entry, or no worse than twice PyTorch's fp32 error
        err, ref_err = (o.double() - e).abs().max().item(), (t.double() - e).abs().max().item()
        assert err <= max(2 * ref_err, 1e-5 * e.abs().max().item()), f"{name}: {err} vs {ref_err}"


# two seeds, one in the interpreter (a gradcheck there takes seconds)
GRADCHECK = [pytest.param(*p.values, seed, id=f"{p.id}-{seed}") for p in backends("mixed_sum_into")
             for seed in ((0,) if registry.interpreted(p.values[0], torch.device(p.values[1])) else (0, 1))]


@pytest.mark.parametrize("backend, device, seed", GRADCHECK)
@pytest.mark.parametrize("flags", sorted(FLAGS))
@pytest.mark.parametrize("training", [True, False])
def test_gradcheck_fp64(backend, device, seed, flags, training):
    normalize = FLAGS[flags]
    xs, w, (rm, rv) = _inputs((2, 3, 5), len(normalize), torch.float64, device, seed=seed)

    def fn(w, *x):
        return fused.mixed_sum(list(x), w, normalize, rm, rv, training, 1e-5, backend=backend)[0]

    assert torch.autograd.gradcheck(fn, (w, *xs))


@pytest.mark.parametrize("backend, device", backends("mixed_sum_into", with_torch=False))
@pytest.mark.parametrize("shape, flags, training", [((3, 5, 7), "mixed", True), ((2, 4, 3, 3), "all", False),
                                                    ((4, 6), "plain", True)])
def test_opcheck(backend, device, shape, flags, training):
    normalize = FLAGS[flags]
    xs, w, (rm, rv) = _inputs(shape, len(normalize), torch.float32, device)
    xs, w = [x.detach() for x in xs], w.detach()
    out = torch.empty(shape[0], 3 * shape[1], *shape[2:], device=device)[:, shape[1]:2 * shape[1]]
    torch.library.opcheck(custom_op(backend, "mixed_sum_into"), (xs, w, normalize, rm, rv, training, 1e-5, out))
    _, mean, var = fused.mixed_sum(xs, w, normalize, rm, rv, training, backend=backend)
    torch.library.opcheck(custom_op(backend, "mixed_sum_backward"),
                          (torch.randn(shape, device=device), xs, w, normalize, mean, var, training, 1e-5))


# Under autocast the fused ops read half-precision activations with float32 weights and statistics. Per op: the
# positions of its BN statistics (float32 always) and of the mixed sums' weights w (float32, or the inputs' dtype).
STATISTICS = {"mixed_sum_into": (3, 4), "mixed_sum_backward": (4, 5), "batch_norm_relu_backward": (2, 3),
              "conv_chain_backward": (5, 6)}
WEIGHTS = {"mixed_sum_into": 1, "mixed_sum_backward": 2}
HALF = [torch.bfloat16, torch.float16]


def _cast(a, dtype):
    if isinstance(a, torch.Tensor):
        return a.to(dtype)
    return [_cast(t, dtype) for t in a] if isinstance(a, list) and any(isinstance(t, torch.Tensor) for t in a) else a


def _half_precision_args(op, args, dtype, w_dtype):
    return tuple(_cast(a, torch.float32 if i in STATISTICS.get(op, ()) else w_dtype if i == WEIGHTS.get(op) else dtype)
                 for i, a in enumerate(args))


def _expected_dtypes(op, outputs, dtype, w_dtype):
    """What the op hands back in: the inputs' dtype, but the sums' statistics and dL/dw in w's and BN statistics in
    float32 (as PyTorch's BN keeps them under autocast)."""
    expected = [dtype] * len(outputs)
    if op == "mixed_sum_into":
        expected[0] = expected[1] = w_dtype  # mean, var; then what it wrote into out
    elif op == "mixed_sum_backward":
        expected[-1] = w_dtype
    elif op == "batch_norm_stats":
        expected = [torch.float32] * len(outputs)
    return expected


def _half_precision_cases():
    return [pytest.param(op, *p.values, dtype, w_dtype, id=f"{op}-{p.id}-{dtype}-w{w_dtype}".replace("torch.", ""))
            for op in registry.OPS for p in backends(op) for dtype in HALF
            for w_dtype in ((dtype, torch.float32) if op in WEIGHTS else (dtype,))
            ]


@pytest.mark.parametrize("op, backend, device, dtype, w_dtype", _half_precision_cases())
def test_half_precision_inputs_accumulate_in_float32(op, backend, device, dtype, w_dtype):
    """Every op of every backend on bf16 and fp16 inputs (the self-check's cases, rounded): the dtypes it hands
    back, and each output within 2 eps(dtype) of its largest entry from the float64 result on the same rounded
    inputs (the output's own rounding is eps/2; accumulating in half precision would cost more)."""
    from stacnas.fused import torch_backend, verify

    for args in verify._inputs(op, torch.device(device)):
        low = _half_precision_args(op, args, dtype, w_dtype)
        got = verify._run(lambda *a: getattr(fused, op)(*a, backend=backend), op, low)
        truth = verify._run(getattr(torch_backend, op), op, tuple(_cast(a, torch.float64) for a in low))
        assert [t.dtype for t in got] == _expected_dtypes(op, got, dtype, w_dtype)
        for i, (a, b) in enumerate(zip(got, truth)):
            error = (a.double() - b).abs().max().item()
            assert error <= 2 * torch.finfo(dtype).eps * b.abs().max().item(), f"output {i}: {error}"


@pytest.mark.parametrize("op, backend, device", [pytest.param(op, *p.values, id=f"{op}-{p.id}") for op in registry.OPS
                                                 for p in backends(op, with_torch=False)])
def test_half_precision_opcheck(op, backend, device):
    """The registered ops on bf16 inputs with float32 weights and statistics: schema, fake tensors (their dtypes
    included) and autograd registration agree with the kernels."""
    from stacnas.fused import verify

    for args in verify._inputs(op, torch.device(device)):
        torch.library.opcheck(custom_op(backend, op), _half_precision_args(op, args, torch.bfloat16, torch.float32))


def _long_sum_case(op, dtype, device):
    """A case of `op` whose sums run over 8192 positive terms per channel: summed in bf16 or fp16 they stall (bf16
    stops growing at 256 when adding ones), in float32 they are within its rounding."""
    gen = torch.Generator().manual_seed(3)

    def positive(*shape):
        return (1 + torch.rand(*shape, generator=gen)).to(device, dtype)

    x = positive(2, 3, 64, 64)
    stats = (x.float().mean((0, 2, 3)), x.float().var((0, 2, 3), unbiased=False))
    if op == "mixed_sum_into":
        return [x, x * 0.5], torch.tensor([0.3, 0.7], device=device), [True, False], None, None, True, 1e-5, \
            torch.empty_like(x)
    if op == "mixed_sum_backward":
        return positive(*x.shape), [x, x * 0.5], torch.tensor([0.3, 0.7], device=device), [True, False], \
            torch.stack([stats[0], torch.zeros(3, device=device)]), torch.stack([stats[1], torch.ones(3, device=device)]), \
            True, 1e-5
    if op == "batch_norm_stats":
        return (x,)
    if op == "batch_norm_relu_backward":
        return positive(*x.shape), x, *stats, True, 1e-5
    if op == "max_pool2d_backward_from_output":  # no long sums: each input gathers at most 9 windows
        return None
    if op == "depthwise_conv2d_weight_grad":
        return positive(*x.shape), x, [3, 3], [1, 1], [1, 1], [1, 1]
    if op == "conv_chain_backward":
        return positive(2, 5, 64, 64), [x], [positive(5, 3, 1, 1)], [1, 1, 0, 0, 1, 1, 1], [False], [None], [None], \
            [False], [0.0], True, [True], [True]
    raise KeyError(op)


def _long_sum_cases():
    return [pytest.param(op, *p.values, dtype, id=f"{op}-{p.id}-{dtype}".replace("torch.", ""))
            for op in registry.OPS if op != "max_pool2d_backward_from_output" for p in backends(op) for dtype in HALF]


@pytest.mark.parametrize("op, backend, device, dtype", _long_sum_cases())
def test_long_sums_accumulate_in_float32(op, backend, device, dtype):
    from stacnas.fused import torch_backend, verify

    args = _long_sum_case(op, dtype, torch.device(device))
    got = verify._run(lambda *a: getattr(fused, op)(*a, backend=backend), op, args)
    truth = verify._run(getattr(torch_backend, op), op, tuple(_cast(a, torch.float64) for a in args))
    for i, (a, b) in enumerate(zip(got, truth)):
        error = (a.double() - b).abs().max().item()
        assert error <= 2 * torch.finfo(dtype).eps * b.abs().max().item(), f"output {i}: {error}"


@pytest.mark.parametrize("backend, device", backends("mixed_sum_into"))
def test_eval_mode_uses_running_statistics(backend, device):
    xs, w, (rm, rv) = _inputs((3, 4, 5), 3, torch.float64, device)
    y, mean, var = fused.mixed_sum(xs, w, [True, False, True], rm, rv, False, 1e-5, backend=backend)
    expected = sum(wk * ((x - m.view(1, -1, 1)) / (v.view(1, -1, 1) + 1e-5).sqrt() if n else x)
                   for wk, x, m, v, n in zip(w, xs, rm, rv, [True, False, True]))
    torch.testing.assert_close(y, expected)
    assert torch.equal(mean[1], torch.zeros(4, dtype=torch.float64, device=device))
    assert torch.equal(mean[0], rm[0])


@pytest.mark.parametrize("backend, device", backends("mixed_sum_into"))
def test_training_statistics_are_the_batch_statistics(backend, device):
    xs, w, _ = _inputs((6, 4, 5, 3), 2, torch.float64, device)
    _, mean, var = fused.mixed_sum(xs, w, [True, True], backend=backend)
    for k, x in enumerate(xs):
        torch.testing.assert_close(mean[k], x.mean((0, 2, 3)))
        torch.testing.assert_close(var[k], x.var((0, 2, 3), unbiased=False))


@pytest.mark.parametrize("backend, device", backends("mixed_sum_into"))
@pytest.mark.parametrize("shape", [(3, 5, 7, 9), (2, 4, 6)])
@pytest.mark.parametrize("training", [True, False])
def test_mixed_sum_into_writes_only_its_slice(backend, device, shape, training):
    """y lands in a channel slice of a larger buffer (a node's part of its cell's output); the rest stays as it was,
    and mixed_sum_backward gives the gradients autograd gives for the reference."""
    normalize = FLAGS["mixed"]
    xs, w, (rm, rv) = _inputs(shape, len(normalize), torch.float32, device)
    C = shape[1]
    buffer = torch.full((shape[0], 3 * C, *shape[2:]), float("nan"), device=device)
    out = buffer[:, C:2 * C]
    mean, var = fused.mixed_sum_into(xs, w, normalize, rm, rv, training, 1e-5, out, backend=backend)
    y_ref, mean_ref, var_ref = fused.reference_mixed_sum(xs, w, normalize, rm, rv, training, 1e-5)
    torch.testing.assert_close(out, y_ref, rtol=1e-5, atol=1e-5)
    assert buffer[:, :C].isnan().all() and buffer[:, 2 * C:].isnan().all()
    torch.testing.assert_close(mean, mean_ref, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(var, var_ref, rtol=1e-5, atol=1e-6)
    grad = torch.randn_like(y_ref)
    grad_x, grad_w = fused.mixed_sum_backward(grad, [x.detach() for x in xs], w.detach(), normalize, mean, var,
                                              training, 1e-5, backend=backend)
    expected = torch.autograd.grad(y_ref, [*xs, w], grad)
    for ours, theirs in zip([*grad_x, grad_w], expected):
        torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("backend, device", backends("mixed_sum_into"))
def test_mixed_sum_into_a_slot_is_differentiable(backend, device):
    """mixed_sum(..., out=slot): y is the slot (a node's slice of its cell's output), and gradients reach the inputs
    and weights through it."""
    from stacnas.nn.cell_output import CellOutput

    normalize = FLAGS["mixed"]
    xs, w, _ = _inputs((2, 3, 4, 5), 3, torch.float64, device)
    cell = CellOutput(3)
    cell.slot(xs[0])
    out = cell.slot(xs[0])
    y, _, _ = fused.mixed_sum(xs, w, normalize, backend=backend, out=out)
    assert y is out and y.data_ptr() == cell.buffer[:, 3:6].data_ptr()
    grad = torch.randn_like(y)
    y_ref = fused.reference_mixed_sum(xs, w, normalize)[0]
    for ours, theirs in zip(torch.autograd.grad(y, [*xs, w], grad), torch.autograd.grad(y_ref, [*xs, w], grad)):
        torch.testing.assert_close(ours, theirs)


@pytest.mark.skipif(fused.unavailable("cpp", torch.device("cpu")) is not None, reason="stacnas._C is not built")
def test_compiled_ops_name_bad_arguments():
    xs, w, (rm, rv) = _inputs((3, 4), 2, torch.float32, "cpu")
    xs, w = [x.detach() for x in xs], w.detach()
    out = torch.empty(3, 4)
    op = torch.ops.stacnas.mixed_sum_into
    with pytest.raises(RuntimeError, match="one entry per input"):
        op(xs, w[:1], [False, False], None, None, True, 1e-5, out)
    with pytest.raises(RuntimeError, match="one flag per input"):
        op(xs, w, [False], None, None, True, 1e-5, out)
    with pytest.raises(RuntimeError, match="same shape"):
        op([xs[0], xs[1][:2]], w, [False, False], None, None, True, 1e-5, out)
    with pytest.raises(RuntimeError, match="needs running_mean and running_var"):
        op(xs, w, [True, False], None, None, False, 1e-5, out)
    with pytest.raises(RuntimeError, match=r"shape \(inputs, channels\) = \(2, 4\)"):
        op(xs, w, [True, False], rm[:, :3], rv[:, :3], False, 1e-5, out)
    with pytest.raises(RuntimeError, match="shape, dtype and device"):
        op(xs, w, [False, True], None, None, True, 1e-5, torch.empty(3, 5))
    xs = [torch.randn(2, 3, 4, 5) for _ in range(2)]
    scattered = torch.empty(2, 3, 5, 4).transpose(2, 3)  # a sample's block is not contiguous
    with pytest.raises(RuntimeError, match="contiguously"):
        op(xs, w, [False, True], None, None, True, 1e-5, scattered)


@pytest.mark.parametrize("backend, device", backends("max_pool2d_backward_from_output", with_torch=False))
@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("size", [(7, 9), (8, 8)])
@pytest.mark.parametrize("ties", [False, True])
def test_max_pool_backward_from_output(backend, device, stride, size, ties):
    torch.manual_seed(stride)
    x = torch.randn(2, 3, *size, dtype=torch.float64, device=device)
    if ties:  # plateaus and NaNs: the argmax must be the one PyTorch's kernel picks
        x = x.round()
        x[0, 0, 2, 3] = float("nan")
        x[1, 2, :, 0] = float("-inf")
    out, indices = F.max_pool2d(x, 3, stride, 1, return_indices=True)
    grad = torch.randn_like(out)
    expected = torch.ops.aten.max_pool2d_with_indices_backward(grad, x, [3, 3], [stride] * 2, [1, 1], [1, 1], False,
                                                               indices)
    ours = fused.max_pool2d_backward_from_output(grad, x, out, [3, 3], [stride] * 2, [1, 1], backend=backend)
    torch.testing.assert_close(ours, expected, rtol=0, atol=1e-12)


def test_backend_choice(monkeypatch):
    monkeypatch.setenv("STACNAS_KERNELS", "torch")
    assert fused.resolve_backend(None, torch.device("cpu")) == "torch"
    assert fused.resolve_backend("auto", torch.device("cpu")) == "torch"  # auto defers to STACNAS_KERNELS
    monkeypatch.setenv("STACNAS_KERNELS", "auto")
    expected = "cpp" if fused.unavailable("cpp", torch.device("cpu")) is None else "torch"
    assert fused.resolve_backend(None, torch.device("cpu")) == expected
    monkeypatch.setenv("STACNAS_KERNELS", "fastest")
    with pytest.raises(ValueError, match="STACNAS_KERNELS='fastest'"):
        fused.default_backend()
    if compiled_backend.LOAD_ERROR is None:
        message = "cannot run on cpu tensors" if compiled_backend.cuda_built() else "built without CUDA kernels"
        with pytest.raises(UsageError, match=message):
            fused.resolve_backend("cuda", torch.device("cpu"))
    with pytest.raises(ValueError, match="unknown kernel backend 'reference'"):
        fused.resolve_backend("reference", torch.device("cpu"))


def test_a_backend_without_an_op_leaves_it_to_one_that_has_it():
    cpu = torch.device("cpu")
    assert "triton" not in registry.OPS["batch_norm_stats"]
    expected = "cpp" if registry.unavailable("cpp", cpu) is None else "torch"
    assert registry.implementation("batch_norm_stats", "triton", cpu).__module__.endswith(
        {"cpp": "compiled_backend", "torch": "torch_backend"}[expected])


def test_triton_on_cpu_needs_the_interpreter(monkeypatch):
    monkeypatch.setitem(os.environ, "TRITON_INTERPRET", "0")
    with pytest.raises(UsageError, match="TRITON_INTERPRET=1"):
        fused.resolve_backend("triton", torch.device("cpu"))


@pytest.mark.parametrize("backend, device", backends("mixed_sum_into", with_torch=False))
def test_works_under_torch_compile(backend, device):
    xs, w, _ = _inputs((3, 5, 2), 3, torch.float32, device)
    xs, w = [x.detach() for x in xs], w.detach()
    normalize = FLAGS["mixed"]
    compiled = torch.compile(lambda x, w: fused.mixed_sum(x, w, normalize, backend=backend)[0] * 2, fullgraph=True)
    torch.testing.assert_close(compiled(xs, w), 2 * fused.reference_mixed_sum(xs, w, normalize)[0])


def test_backend_choice_is_marked_constant_as_torch_compiler_marks_it():
    """registry.constant_under_compile sets the mark torch.compiler.assume_constant_result sets (without importing
    torch._dynamo); were the mark another in some torch version, the compiled tests would fail to trace."""
    def mark(decorate):
        fn = decorate(lambda: None)
        return {k: v for k, v in vars(fn).items()}
    assert mark(registry.constant_under_compile) == mark(torch.compiler.assume_constant_result) != {}


@pytest.mark.parametrize("backend, device", backends("batch_norm_stats", with_torch=False))
@pytest.mark.parametrize("shape", [(4, 3, 5, 7), (2, 17, 9, 11)])
def test_batch_norm_stats(backend, device, shape):
    x = torch.randn(shape, dtype=torch.float64, device=device) * 3 + 2
    mean, var = fused.batch_norm_stats(x, backend)
    torch.testing.assert_close(mean, x.mean((0, 2, 3)))
    torch.testing.assert_close(var, x.var((0, 2, 3), unbiased=False))


@pytest.mark.parametrize("backend, device", backends("batch_norm_relu_backward", with_torch=False))
@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("shape", [(4, 3, 5, 7), (2, 17, 9, 11)])
def test_batch_norm_relu_backward(backend, device, training, shape):
    """The gradient of ReLU(BatchNorm(x)) w.r.t. x, through the batch statistics when training."""
    x = (torch.randn(shape, dtype=torch.float64, device=device) + 0.3).requires_grad_()
    grad = torch.randn(shape, dtype=torch.float64, device=device)
    running_mean, running_var = torch.randn(shape[1], dtype=torch.float64, device=device), \
        torch.rand(shape[1], dtype=torch.float64, device=device) + 0.5
    out = torch.relu(F.batch_norm(x, running_mean.clone(), running_var.clone(), training=training, eps=1e-5))
    expected = torch.autograd.grad(out, x, grad)[0]
    mean, var = fused.batch_norm_stats(x, backend) if training else (running_mean, running_var)
    ours = fused.batch_norm_relu_backward(grad, x.detach(), mean, var, training, 1e-5, backend)
    torch.testing.assert_close(ours, expected)


# (kernel, stride, padding, dilation): DARTS' sep/dil convs, a reduction stride, odd padding and a non-square filter
DEPTHWISE = [((3, 3), 1, (1, 1), 1), ((5, 5), 1, (2, 2), 1), ((3, 3), 1, (2, 2), 2), ((5, 5), 2, (4, 4), 2),
             ((3, 3), 2, (1, 1), 1), ((3, 5), 2, (0, 3), 1), ((5, 3), 3, (1, 0), 2)]


@pytest.mark.parametrize("backend, device", backends("depthwise_conv2d_weight_grad", with_torch=False))
@pytest.mark.parametrize("kernel,stride,padding,dilation", DEPTHWISE)
@pytest.mark.parametrize("size", [(7, 9), (8, 8)])
@pytest.mark.parametrize("contiguous", [True, False])
def test_depthwise_weight_grad(backend, device, kernel, stride, padding, dilation, size, contiguous):
    """The filter gradient of a depthwise conv against PyTorch's, in float64 on random data."""
    g = torch.Generator().manual_seed(sum(kernel) + stride)
    x = torch.randn(3, 5, *size, generator=g, dtype=torch.float64)
    if not contiguous:
        x = x.transpose(2, 3).contiguous().transpose(2, 3)
    weight = torch.randn(5, 1, *kernel, generator=g, dtype=torch.float64)
    out = F.conv2d(x, weight, None, stride, padding, dilation, 5)
    grad = torch.randn(out.shape, generator=g, dtype=torch.float64)
    x, weight, grad = x.to(device), weight.to(device), grad.to(device)
    expected = torch.ops.aten.convolution_backward(grad, x, weight, None, [stride] * 2, list(padding), [dilation] * 2,
                                                   False, [0, 0], 5, [False, True, False])[1]
    args = (list(kernel), [stride] * 2, list(padding), [dilation] * 2)
    torch.testing.assert_close(fused.depthwise_conv2d_weight_grad(grad, x, *args, backend), expected, rtol=1e-12,
                               atol=1e-12)
    ours32 = fused.depthwise_conv2d_weight_grad(grad.float(), x.float(), *args, backend)
    torch.testing.assert_close(ours32, expected.float(), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("backend, device", backends("depthwise_conv2d_weight_grad", with_torch=False))
def test_depthwise_weight_grad_opcheck(backend, device):
    x, grad = torch.randn(2, 3, 9, 7, device=device), torch.randn(2, 3, 5, 4, device=device)
    torch.library.opcheck(custom_op(backend, "depthwise_conv2d_weight_grad"), (grad, x, [3, 3], [2, 2], [2, 2], [2, 2]))


# conv_chain_backward's chains, each step (c_in, c_out, kernel, stride, padding, dilation, groups, relu, bn, bias):
# DARTS' and AutoDL's conv ops, and convs of every route (depthwise, pointwise, dense, grouped)
DEPTHWISE_3X3 = (5, 5, 3, 1, 1, 1, 5, True, False, False)
POINTWISE = (5, 5, 1, 1, 0, 1, 1, False, False, False)
CHAINS = {
    "sep_conv 3x3": [DEPTHWISE_3X3, POINTWISE, (5, 5, 3, 1, 1, 1, 5, True, True, False),
                     (5, 6, 1, 1, 0, 1, 1, False, False, False)],
    "sep_conv 5x5 stride 2": [(5, 5, 5, 2, 2, 1, 5, True, False, False), POINTWISE,
                              (5, 5, 5, 1, 2, 1, 5, True, True, False), POINTWISE],
    "dil_conv 3x3": [(5, 5, 3, 1, 2, 2, 5, True, False, False), (5, 6, 1, 1, 0, 1, 1, False, False, False)],
    "dil_conv 5x5 stride 2": [(5, 5, 5, 2, 4, 2, 5, True, False, False), POINTWISE],
    "AutoDL's conv with a bias": [DEPTHWISE_3X3, (5, 6, 1, 1, 0, 1, 1, False, False, True)],
    "dense 3x3 with a bias": [(5, 6, 3, 1, 1, 1, 1, True, False, True)],
    "pointwise stride 2": [(5, 3, 1, 2, 0, 1, 1, True, False, False)],
    "grouped": [(4, 6, 3, 1, 1, 1, 2, True, False, False)],
    "depthwise unpadded, no ReLU": [(5, 5, 3, 1, 0, 1, 5, False, False, False)],
}


def _chain(name, size, training, dtype=torch.float64, seed=0):
    """conv_chain_backward's arguments for CHAINS[name] on random data: each step's input the previous conv's output
    (the BN inputs shifted, so that ReLU cuts some), the statistics the batch's (training) or running ones."""
    g = torch.Generator().manual_seed(seed)
    randn = lambda *shape: torch.randn(*shape, generator=g, dtype=torch.float64)  # noqa: E731
    z = randn(3, CHAINS[name][0][0], *size)
    inputs, weights, geometry, means, variances = [], [], [], [], []
    for c_in, c_out, k, stride, padding, dilation, groups, relu, bn, bias in CHAINS[name]:
        z = z + 0.3 if bn else z
        inputs.append(z)
        weights.append(randn(c_out, c_in // groups, k, k))
        geometry += [stride] * 2 + [padding] * 2 + [dilation] * 2 + [groups]
        if bn and training:
            var, mean = torch.var_mean(z, dim=[0, 2, 3], correction=0)
        elif bn:
            mean, var = randn(c_in) * 0.1, randn(c_in).abs() + 0.5
        means.append(mean if bn else None)
        variances.append(var if bn else None)
        z = F.conv2d(z, weights[-1], None, stride, padding, dilation, groups)
    steps = CHAINS[name]
    cast = lambda ts: [None if t is None else t.to(dtype) for t in ts]  # noqa: E731
    return (randn(*z.shape).to(dtype), cast(inputs), cast(weights), geometry, [s[7] for s in steps], cast(means),
            cast(variances), [s[8] and training for s in steps], [1e-5 if s[8] else 0.0 for s in steps], True,
            [True] * len(steps), [s[9] for s in steps])


def _chain_results(found) -> list:
    grad_x, grad_weights, grad_biases = found
    return [grad_x, *grad_weights, *grad_biases]


@pytest.mark.parametrize("backend, device", backends("conv_chain_backward", with_torch=False))
@pytest.mark.parametrize("chain", sorted(CHAINS))
@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("size", [(7, 9), (8, 8)])
def test_conv_chain_backward_matches_reference(backend, device, chain, training, size):
    """Every route of the compiled chain backward against the reference (each step recomputed and differentiated by
    autograd): float64 to 1e-12, float32 within float32 rounding; what is not asked for is None."""
    args = _chain(chain, size, training)
    to = lambda a: a.to(device) if isinstance(a, torch.Tensor) else [to(t) for t in a] if isinstance(a, list) and \
        any(isinstance(t, torch.Tensor) for t in a) else a  # noqa: E731
    expected = _chain_results(fused.conv_chain_backward(*args, backend="torch"))
    ours = _chain_results(fused.conv_chain_backward(*map(to, args), backend=backend))
    assert [t is None for t in ours] == [t is None for t in expected]
    for got, want in zip(ours, expected):
        if want is not None:
            assert want.abs().max() > 0
            torch.testing.assert_close(got.cpu(), want, rtol=1e-12, atol=1e-12)
    ours32 = _chain_results(fused.conv_chain_backward(*map(to, _chain(chain, size, training, torch.float32)),
                                                      backend=backend))
    for got, want in zip(ours32, expected):
        if want is not None:
            torch.testing.assert_close(got.cpu().double(), want, rtol=1e-4, atol=1e-4 * want.abs().max().item())
    unasked = list(args)
    unasked[9], unasked[10] = False, [i % 2 == 0 for i in range(len(args[1]))]
    found = _chain_results(fused.conv_chain_backward(*map(to, unasked), backend=backend))
    assert found[0] is None and all((t is None) == (i % 2 == 1) for i, t in enumerate(found[1:1 + len(args[1])]))


@pytest.mark.parametrize("backend, device", backends("conv_chain_backward", with_torch=False))
def test_conv_chain_backward_opcheck(backend, device):
    args = [a.to(device) if isinstance(a, torch.Tensor) else
            [t.float().to(device) if isinstance(t, torch.Tensor) else t for t in a] if isinstance(a, list) else a
            for a in _chain("sep_conv 3x3", (7, 9), True)]
    args[0] = args[0].float()
    torch.library.opcheck(custom_op(backend, "conv_chain_backward"), tuple(args))


@pytest.mark.skipif(compiled_backend.LOAD_ERROR is not None, reason="stacnas._C is not built")
def test_an_extension_built_for_another_torch_is_refused(monkeypatch):
    from stacnas import _C

    monkeypatch.setattr(_C, "torch_version", "1.0.0")
    assert "stacnas._C was built for torch 1.0.0, this is torch" in compiled_backend._load()
    monkeypatch.setattr(_C, "torch_version", torch.__version__.split("+")[0])
    assert compiled_backend._load() is None
