"""The compiled fused ops against the PyTorch reference: random data, odd shapes, non-contiguous inputs, fp64
gradcheck, opcheck. On CPU here (C++); the same tests run the CUDA kernels when a GPU is visible."""
import pytest
import torch
import torch.nn.functional as F

from stacnas import fused

pytestmark = pytest.mark.skipif(fused.extension_error() is not None, reason="stacnas._C is not built")

DEVICES = ["cpu"] + (["cuda"] if fused.cuda_kernels_built() and torch.cuda.is_available() else [])
SHAPES = [(5, 3), (3, 5, 7), (2, 17, 9, 11), (3, 7, 61, 67)]  # the last spans many elements per channel
FLAGS = {"plain": [False, False, False], "mixed": [True, False, True], "all": [True, True, True]}


def _backend(device):
    return "cuda" if device == "cuda" else "cpp"


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


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("flags", sorted(FLAGS))
@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("contiguous", [True, False])
def test_matches_reference_fp32(device, shape, flags, training, contiguous):
    normalize = FLAGS[flags]
    xs, w, (rm, rv) = _inputs(shape, len(normalize), torch.float32, device, contiguous=contiguous)
    args = (normalize, rm, rv, training, 1e-5)
    y, mean, var = fused.mixed_sum(xs, w, *args, backend=_backend(device))
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


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("flags", sorted(FLAGS))
@pytest.mark.parametrize("training", [True, False])
def test_gradcheck_fp64(device, seed, flags, training):
    normalize = FLAGS[flags]
    xs, w, (rm, rv) = _inputs((2, 3, 5), len(normalize), torch.float64, device, seed=seed)

    def fn(w, *x):
        return fused.mixed_sum(list(x), w, normalize, rm, rv, training, 1e-5, backend=_backend(device))[0]

    assert torch.autograd.gradcheck(fn, (w, *xs))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("shape, flags, training", [((3, 5, 7), "mixed", True), ((2, 4, 3, 3), "all", False),
                                                    ((4, 6), "plain", True)])
def test_opcheck(device, shape, flags, training):
    normalize = FLAGS[flags]
    xs, w, (rm, rv) = _inputs(shape, len(normalize), torch.float32, device)
    torch.library.opcheck(torch.ops.stacnas.mixed_sum.default, (xs, w, normalize, rm, rv, training, 1e-5))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_low_precision_no_worse_than_torch(device, dtype):
    normalize = FLAGS["mixed"]
    xs, w, (rm, rv) = _inputs((4, 33, 17, 5), 3, torch.float32, device)
    exact = fused.reference_mixed_sum([x.detach() for x in xs], w.detach(), normalize, rm, rv)[0]
    low = [x.detach().to(dtype) for x in xs]
    ours = fused.mixed_sum(low, w.detach().to(dtype), normalize, backend=_backend(device))[0].float()
    theirs = fused.reference_mixed_sum(low, w.detach().to(dtype), normalize)[0].float()
    assert (ours - exact).abs().max() <= 2 * (theirs - exact).abs().max()


def test_eval_mode_uses_running_statistics():
    xs, w, (rm, rv) = _inputs((3, 4, 5), 3, torch.float64, "cpu")
    y, mean, var = fused.mixed_sum(xs, w, [True, False, True], rm, rv, False, 1e-5, backend="cpp")
    expected = sum(wk * ((x - m.view(1, -1, 1)) / (v.view(1, -1, 1) + 1e-5).sqrt() if n else x)
                   for wk, x, m, v, n in zip(w, xs, rm, rv, [True, False, True]))
    torch.testing.assert_close(y, expected)
    assert torch.equal(mean[1], torch.zeros(4, dtype=torch.float64)) and torch.equal(mean[0], rm[0])


def test_training_statistics_are_the_batch_statistics():
    xs, w, _ = _inputs((6, 4, 5, 3), 2, torch.float64, "cpu")
    _, mean, var = fused.mixed_sum(xs, w, [True, True], backend="cpp")
    for k, x in enumerate(xs):
        torch.testing.assert_close(mean[k], x.mean((0, 2, 3)))
        torch.testing.assert_close(var[k], x.var((0, 2, 3), unbiased=False))


def test_bad_arguments_are_named():
    xs, w, (rm, rv) = _inputs((3, 4), 2, torch.float32, "cpu")
    with torch.no_grad():
        with pytest.raises(RuntimeError, match="one entry per input"):
            torch.ops.stacnas.mixed_sum(xs, w[:1], [False, False], None, None, True, 1e-5)
        with pytest.raises(RuntimeError, match="one flag per input"):
            torch.ops.stacnas.mixed_sum(xs, w, [False], None, None, True, 1e-5)
        with pytest.raises(RuntimeError, match="same shape"):
            torch.ops.stacnas.mixed_sum([xs[0], xs[1][:2]], w, [False, False], None, None, True, 1e-5)
        with pytest.raises(RuntimeError, match="needs running_mean and running_var"):
            torch.ops.stacnas.mixed_sum(xs, w, [True, False], None, None, False, 1e-5)
        with pytest.raises(RuntimeError, match=r"shape \(inputs, channels\) = \(2, 4\)"):
            torch.ops.stacnas.mixed_sum(xs, w, [True, False], rm[:, :3], rv[:, :3], False, 1e-5)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("size", [(7, 9), (8, 8)])
@pytest.mark.parametrize("ties", [False, True])
def test_max_pool_backward_from_output(device, stride, size, ties):
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
    ours = torch.ops.stacnas.max_pool2d_backward_from_output(grad, x, out, [3, 3], [stride] * 2, [1, 1])
    torch.testing.assert_close(ours, expected, rtol=0, atol=1e-12)


def test_backend_choice(monkeypatch):
    monkeypatch.setenv("STACNAS_KERNELS", "reference")
    assert fused.resolve_backend(None, torch.device("cpu")) == "reference"
    monkeypatch.setenv("STACNAS_KERNELS", "auto")
    assert fused.resolve_backend(None, torch.device("cpu")) == "cpp"
    monkeypatch.setenv("STACNAS_KERNELS", "fastest")
    with pytest.raises(ValueError, match="STACNAS_KERNELS='fastest'"):
        fused.default_backend()
    message = "cannot run on cpu tensors" if fused.cuda_kernels_built() else "built without CUDA kernels"
    with pytest.raises(RuntimeError, match=message):
        fused.resolve_backend("cuda", torch.device("cpu"))


def test_works_under_torch_compile():
    xs, w, (rm, rv) = _inputs((3, 5, 2), 3, torch.float32, "cpu")
    xs, w = [x.detach() for x in xs], w.detach()
    normalize = FLAGS["mixed"]
    compiled = torch.compile(lambda x, w: fused.mixed_sum(x, w, normalize, backend="cpp")[0] * 2, fullgraph=True)
    torch.testing.assert_close(compiled(xs, w), 2 * fused.reference_mixed_sum(xs, w, normalize)[0])


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("shape", [(4, 3, 5, 7), (2, 17, 9, 11)])
def test_batch_norm_stats(device, shape):
    x = torch.randn(shape, dtype=torch.float64, device=device) * 3 + 2
    mean, var = torch.ops.stacnas.batch_norm_stats(x)
    torch.testing.assert_close(mean, x.mean((0, 2, 3)))
    torch.testing.assert_close(var, x.var((0, 2, 3), unbiased=False))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("shape", [(4, 3, 5, 7), (2, 17, 9, 11)])
def test_batch_norm_relu_backward(device, training, shape):
    """The gradient of ReLU(BatchNorm(x)) w.r.t. x, through the batch statistics when training."""
    x = (torch.randn(shape, dtype=torch.float64, device=device) + 0.3).requires_grad_()
    grad = torch.randn(shape, dtype=torch.float64, device=device)
    running_mean, running_var = torch.randn(shape[1], dtype=torch.float64, device=device), \
        torch.rand(shape[1], dtype=torch.float64, device=device) + 0.5
    out = torch.relu(F.batch_norm(x, running_mean.clone(), running_var.clone(), training=training, eps=1e-5))
    expected = torch.autograd.grad(out, x, grad)[0]
    mean, var = torch.ops.stacnas.batch_norm_stats(x.detach()) if training else (running_mean, running_var)
    ours = torch.ops.stacnas.batch_norm_relu_backward(grad, x.detach(), mean, var, training, 1e-5)
    torch.testing.assert_close(ours, expected)


# (kernel, stride, padding, dilation): DARTS' sep/dil convs, a reduction stride, odd padding and a non-square filter
DEPTHWISE = [((3, 3), 1, (1, 1), 1), ((5, 5), 1, (2, 2), 1), ((3, 3), 1, (2, 2), 2), ((5, 5), 2, (4, 4), 2),
             ((3, 3), 2, (1, 1), 1), ((3, 5), 2, (0, 3), 1), ((5, 3), 3, (1, 0), 2)]


@pytest.mark.parametrize("kernel,stride,padding,dilation", DEPTHWISE)
@pytest.mark.parametrize("size", [(7, 9), (8, 8)])
@pytest.mark.parametrize("contiguous", [True, False])
def test_depthwise_weight_grad(kernel, stride, padding, dilation, size, contiguous):
    """The filter gradient of a depthwise conv against PyTorch's, in float64 on random data."""
    g = torch.Generator().manual_seed(sum(kernel) + stride)
    x = torch.randn(3, 5, *size, generator=g, dtype=torch.float64)
    if not contiguous:
        x = x.transpose(2, 3).contiguous().transpose(2, 3)
    weight = torch.randn(5, 1, *kernel, generator=g, dtype=torch.float64)
    out = F.conv2d(x, weight, None, stride, padding, dilation, 5)
    grad = torch.randn(out.shape, generator=g, dtype=torch.float64)
    expected = torch.ops.aten.convolution_backward(grad, x, weight, None, [stride] * 2, list(padding), [dilation] * 2,
                                                   False, [0, 0], 5, [False, True, False])[1]
    ours = torch.ops.stacnas.depthwise_conv2d_weight_grad(grad, x, list(kernel), [stride] * 2, list(padding),
                                                          [dilation] * 2)
    torch.testing.assert_close(ours, expected, rtol=1e-12, atol=1e-12)
    ours32 = torch.ops.stacnas.depthwise_conv2d_weight_grad(grad.float(), x.float(), list(kernel), [stride] * 2,
                                                            list(padding), [dilation] * 2)
    torch.testing.assert_close(ours32, expected.float(), rtol=1e-5, atol=1e-5)


def test_depthwise_weight_grad_opcheck():
    x, grad = torch.randn(2, 3, 9, 7), torch.randn(2, 3, 5, 4)
    torch.library.opcheck(torch.ops.stacnas.depthwise_conv2d_weight_grad.default,
                          (grad, x, [3, 3], [2, 2], [2, 2], [2, 2]))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("backend", ["compiled", "reference"])
@pytest.mark.parametrize("shape", [(3, 5, 7, 9), (2, 4, 6)])
@pytest.mark.parametrize("training", [True, False])
def test_mixed_sum_into_writes_only_its_slice(device, backend, shape, training):
    """y lands in a channel slice of a larger buffer (a node's part of its cell's output); the rest stays as it was,
    and mixed_sum_backward gives the gradients autograd gives for the reference."""
    backend = _backend(device) if backend == "compiled" else backend
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


def test_mixed_sum_into_refuses_bad_out():
    xs, w, (rm, rv) = _inputs((2, 3, 4, 5), 2, torch.float32, "cpu")
    xs = [x.detach() for x in xs]
    with pytest.raises(RuntimeError, match="shape, dtype and device"):
        torch.ops.stacnas.mixed_sum_into(xs, w.detach(), [False, True], None, None, True, 1e-5,
                                         torch.empty(2, 3, 4, 6))
    scattered = torch.empty(2, 3, 5, 4).transpose(2, 3)  # a sample's block is not contiguous
    with pytest.raises(RuntimeError, match="contiguously"):
        torch.ops.stacnas.mixed_sum_into(xs, w.detach(), [False, True], None, None, True, 1e-5, scattered)


@pytest.mark.parametrize("device", DEVICES)
def test_mixed_sum_into_opcheck(device):
    xs, w, (rm, rv) = _inputs((3, 4, 5, 2), 3, torch.float32, device)
    out = torch.empty(3, 12, 5, 2, device=device)[:, 4:8]
    torch.library.opcheck(torch.ops.stacnas.mixed_sum_into.default,
                          ([x.detach() for x in xs], w.detach(), FLAGS["mixed"], rm, rv, True, 1e-5, out))
