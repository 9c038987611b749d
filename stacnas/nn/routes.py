"""Faster routes for the convolutions and pools inside DARTS' ops, as autograd Functions the lean supernet calls.

PyTorch's CPU backward of the depthwise and pointwise convs in sep_conv and dil_conv costs 5–20× their forward, and
its CPU max-pool 25× two elementwise passes. These routes compute the same values (exactly, or equal to rounding
where sums are associated differently, as each function says) and keep less for backward:
  - ConvChain: DARTS' conv ops (ReLU, convs, BN+ReLU inside sep_conv) keeping each conv's input, not the
    activations, their convs taking conv_forward's routes and stacnas.fused.conv_chain_backward's;
  - FactorizedReduceConvs: a FactorizedReduce's two 1×1 stride-2 convs as two matrix products into one output;
  - MaxPoolNoIndices: a 3×3 max-pool that keeps no int64 indices;
  - avg_pool3x3: a 3×3 average pool (count_include_pad=False) as two 3-wide sums;
  - dropout: nn.Dropout keeping its mask as bool on CPUs (PyTorch keeps the float noise there).
`backend` is the kernel backend of the fused ops they call (stacnas.fused).

Under torch.autocast the convolutions and matrix products run in the autocast dtype (compute_dtype) and their
results, kept for backward, stay in it, as the reference's do; BN statistics and weight gradients are float32, sums
over windows accumulate in float32.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.autograd.function import once_differentiable

from .. import fused
from ..fused.registry import implementation
from ..fused.torch_backend import wide
from .batchnorm import normalize


def pair(v) -> list:
    return list(v) if isinstance(v, (tuple, list)) else [v, v]


def compute_dtype(x: torch.Tensor, weight: torch.Tensor) -> torch.dtype:
    """The dtype a convolution of x with weight runs in: autocast's when it is on for x's device, else the weight's."""
    if torch.is_autocast_enabled(x.device.type):
        return torch.get_autocast_dtype(x.device.type)
    return weight.dtype


def _as(t, dtype):
    return None if t is None else t.to(dtype)


def normalized(x, mean, var, eps):
    """(x - mean) / sqrt(var + eps), per channel: BatchNorm(affine=False) with these statistics, by PyTorch's own
    kernel (one call)."""
    return F.batch_norm(x, mean, var, None, None, False, 0.0, eps)


class ConvChain(torch.autograd.Function):
    """A chain of convolutions as DARTS' conv ops apply them up to their trailing BN, in one autograd node: each
    step is (conv, bn, relu): conv(ReLU(x)) when relu, conv(ReLU(bn(x))) with bn's statistics (sep_conv's middle
    BatchNorm(affine=False)), or conv(x). It keeps each conv's input, not the activations (recomputed in backward,
    by stacnas.fused.conv_chain_backward); with batch statistics the gradient flows through them as BatchNorm's
    does. `act` may hand in the first step's activation already computed (ReLU(x), shared by several ops); it is not
    kept either. params: every conv's weight and bias (when it has one), in order, so that autograd hands them their
    gradients. The BNs run as their own forward would (batchnorm.normalize: their running statistics updated once,
    here)."""

    @staticmethod
    def forward(ctx, x, act, steps, backend, *params):
        dtype = compute_dtype(x, steps[0][0].weight)
        ctx.input_dtype = x.dtype
        z = x.to(dtype)  # kept as the convs use it
        inputs, moments, ctx.training, ctx.eps = [], [], [], []
        for i, (conv, bn, relu) in enumerate(steps):
            training = False
            if bn is not None:
                normalized_z, mean, var, training = normalize(bn, z)
                moments += [mean, var]
                a = torch.relu(normalized_z).to(dtype)
            else:
                a = (act.to(dtype) if i == 0 and act is not None else F.relu(z)) if relu else z
            inputs.append(z)
            ctx.training.append(training)
            ctx.eps.append(bn.eps if bn is not None else 0.0)
            z = conv_forward(a, conv.weight.to(dtype), _as(conv.bias, dtype), conv.stride, conv.padding,
                             conv.dilation, conv.groups)
        ctx.save_for_backward(*inputs, *moments)
        ctx.steps, ctx.backend = steps, backend
        return z

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):
        steps, saved = ctx.steps, ctx.saved_tensors
        moments = iter(saved[len(steps):])
        stats = [(next(moments), next(moments)) if bn is not None else (None, None) for _, bn, _ in steps]
        needs = iter(ctx.needs_input_grad[4:])  # per step: its weight, and its bias when it has one
        wanted = [(next(needs), conv.bias is not None and next(needs)) for conv, _, _ in steps]
        # the kernel itself, not fused.conv_chain_backward: these arguments are its own forward's, consistent by
        # construction, so the dispatcher's Python checks (~20 µs a chain) would find nothing (the compiled op still
        # checks them in C++)
        backward = implementation("conv_chain_backward", ctx.backend, grad.device)
        dtype = saved[0].dtype  # the forward's compute dtype: the kernel takes one dtype throughout
        grad_x, grad_weights, grad_biases = backward(
            grad.to(dtype), saved[:len(steps)], [conv.weight.to(dtype) for conv, _, _ in steps], geometry(steps),
            [relu for _, _, relu in steps], [m for m, _ in stats], [v for _, v in stats], ctx.training, ctx.eps,
            ctx.needs_input_grad[0], [w for w, _ in wanted], [b for _, b in wanted])
        grads = [_as(g, conv.weight.dtype) for (conv, _, _), gw, gb in zip(steps, grad_weights, grad_biases)
                 for g in ((gw, gb) if conv.bias is not None else (gw,))]
        return (_as(grad_x, ctx.input_dtype), None, None, None, *grads)


def geometry(steps) -> list:
    """stacnas.fused.conv_chain_backward's geometry of ConvChain's steps: each conv's stride, padding, dilation and
    groups."""
    return [v for conv, _, _ in steps
            for v in (*pair(conv.stride), *pair(conv.padding), *pair(conv.dilation), conv.groups)]


def conv_chain(steps, x, backend, act=None):
    """ConvChain's result for `steps` on x."""
    params = [p for conv, _, _ in steps for p in (conv.weight, conv.bias) if p is not None]
    return ConvChain.apply(x, act, steps, backend, *params)


def _pointwise(x, weight, stride, padding, groups) -> bool:
    """A 1×1, stride-1, unpadded, ungrouped conv on a CPU tensor: a matrix product, 1.5–4× faster there than
    PyTorch's conv (whose fixed cost per call is ~0.1 ms)."""
    return (x.device.type == "cpu" and weight.shape[2:] == (1, 1) and groups == 1 and pair(stride) == [1, 1]
            and pair(padding) == [0, 0])


def conv_forward(x, weight, bias, stride, padding, dilation, groups):
    """F.conv2d(x, weight, bias, stride, padding, dilation, groups); pointwise convs as matrix products on CPUs
    (equal to rounding). Under autocast the product runs in its dtype, and so does the result, as F.conv2d's."""
    if _pointwise(x, weight, stride, padding, groups):
        n, c_out = x.shape[0], weight.shape[0]
        # bmm with the weight expanded (a view): torch.matmul would copy x to fold the batch into one product
        matrix = weight.reshape(1, c_out, -1).expand(n, -1, -1)
        y = x.reshape(n, x.shape[1], -1)
        if bias is None:
            y = torch.bmm(matrix, y)
        else:
            y = torch.baddbmm(bias.to(y.dtype).view(1, c_out, 1), matrix, y)
        return y.view(n, c_out, *x.shape[2:])
    return F.conv2d(x, weight, bias, stride, padding, dilation, groups)


# ---- FactorizedReduce --------------------------------------------------------------------------------------------

def _halves(a: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """(N, 2C, ⌈H/2⌉·⌈W/2⌉) in dtype: a's even rows and columns, then its odd ones (shifted by a pixel, a zero row
    and column padded on odd sizes): what a FactorizedReduce's two 1×1 stride-2 convs read."""
    n, c, h, w = a.shape
    ho, wo = (h + 1) // 2, (w + 1) // 2
    x = (a.new_zeros if h % 2 or w % 2 else a.new_empty)(n, 2 * c, ho, wo, dtype=dtype)
    x[:, :c] = a[:, :, ::2, ::2]
    x[:, c:, :h // 2, :w // 2] = a[:, :, 1::2, 1::2]
    return x.view(n, 2 * c, ho * wo)


def _batched(weight: torch.Tensor, n: int) -> torch.Tensor:
    return weight.reshape(1, weight.shape[0], -1).expand(n, -1, -1)  # a view: the batch shares one matrix


class FactorizedReduceConvs(torch.autograd.Function):
    """cat(conv_a(ReLU(h)), conv_b(ReLU(h) shifted by a pixel)), a FactorizedReduce's two 1×1 stride-2 convs up to
    its BN, in one autograd node: each conv a matrix product over the pixels it reads, written into its half of
    the output (PyTorch's CPU conv costs ~0.1 ms a call, and the concat a copy). Keeps h (a node state, kept
    anyway), not ReLU(h) or the pixels read; `act` may hand in ReLU(h) already computed. Equal to the convs to
    rounding (sums associated differently); under autocast the products and their result are in its dtype (as the
    convs')."""

    @staticmethod
    def forward(ctx, h, act, weight_a, bias_a, weight_b, bias_b):
        n, c, rows, cols = h.shape
        ctx.dtype = dtype = compute_dtype(h, weight_a)
        x = _halves(act if act is not None else F.relu(h), dtype)
        c_half = weight_a.shape[0]
        y = h.new_empty(n, 2 * c_half, x.shape[2], dtype=dtype)
        for half, weight, bias in ((0, weight_a, bias_a), (1, weight_b, bias_b)):
            pixels, matrix = x[:, half * c:(half + 1) * c], _batched(weight.to(dtype), n)
            y[:, half * c_half:(half + 1) * c_half] = (
                torch.bmm(matrix, pixels) if bias is None else
                torch.baddbmm(bias.to(dtype).view(1, -1, 1), matrix, pixels))
        ctx.save_for_backward(h, weight_a, weight_b)
        ctx.biased = (bias_a is not None, bias_b is not None)
        return y.view(n, 2 * c_half, (rows + 1) // 2, (cols + 1) // 2)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):
        h, weight_a, weight_b = ctx.saved_tensors
        n, c, rows, cols = h.shape
        x = _halves(F.relu(h), ctx.dtype)
        grad = grad.to(ctx.dtype).reshape(n, grad.shape[1], -1)
        c_half = weight_a.shape[0]
        grads, grad_x = [], torch.empty_like(x)
        for half, weight in ((0, weight_a), (1, weight_b)):
            g, pixels = grad[:, half * c_half:(half + 1) * c_half], x[:, half * c:(half + 1) * c]
            grads.append(torch.bmm(g, pixels.transpose(1, 2)).sum(0).view_as(weight).to(weight.dtype))
            grads.append(g.sum((0, 2)).to(weight.dtype) if ctx.biased[half] else None)
            if ctx.needs_input_grad[0]:
                grad_x[:, half * c:(half + 1) * c] = torch.bmm(_batched(weight.to(ctx.dtype), n).transpose(1, 2), g)
        grad_h = None
        if ctx.needs_input_grad[0]:
            grad_x = grad_x.view(n, 2 * c, (rows + 1) // 2, (cols + 1) // 2)
            grad_h = torch.zeros(h.shape, dtype=grad.dtype, device=h.device)
            grad_h[:, :, ::2, ::2] = grad_x[:, :c]
            grad_h[:, :, 1::2, 1::2] = grad_x[:, c:, :rows // 2, :cols // 2]
            grad_h = grad_h.masked_fill_(h <= 0, 0).to(h.dtype)
        return grad_h, None, grads[0], grads[1], grads[2], grads[3]


def factorized_reduce(convs, h, act=None):
    """FactorizedReduceConvs' result for a FactorizedReduce's two convs on h."""
    a, b = convs
    return FactorizedReduceConvs.apply(h, act, a.weight, a.bias, b.weight, b.bias)


# ---- 3×3 pools -------------------------------------------------------------------------------------------------

def _window3(x: torch.Tensor, combine, pad_value: float) -> torch.Tensor:
    """combine over each 3×3 window (padding 1, stride 1), as two 3-wide passes: rows, then columns."""
    p = F.pad(x, (1, 1, 1, 1), value=pad_value)
    rows = combine(combine(p[..., :-2], p[..., 1:-1]), p[..., 2:])
    return combine(combine(rows[..., :-2, :], rows[..., 1:-1, :]), rows[..., 2:, :])


def _strided(y: torch.Tensor, stride: int) -> torch.Tensor:
    # padding 1, kernel 3: the stride-s output is every s-th stride-1 output
    return y if stride == 1 else y[..., ::stride, ::stride].contiguous()


def max_pool3x3(x: torch.Tensor, stride: int) -> torch.Tensor:
    """F.max_pool2d(x, 3, stride, 1), exactly (a max is a max in any order), without autograd. PyTorch's CPU
    max-pool on NCHW costs ~25× more than these two elementwise passes (3.9 vs 0.16 ms at 16×16×32×32)."""
    return _strided(_window3(x, torch.maximum, float("-inf")), stride)


def avg_pool3x3(x: torch.Tensor, stride: int) -> torch.Tensor:
    """F.avg_pool2d(x, 3, stride, 1, count_include_pad=False) as two 3-wide sums divided by each window's count
    of real pixels (differentiable; the sums are associated differently from PyTorch's, so equal to rounding). Half
    precision sums in float32, as PyTorch's pool accumulates."""
    h, w = x.shape[-2:]
    summed = wide(x)
    count = _window3(summed.new_ones(1, 1, h, w), torch.add, 0.0)
    return _strided(_window3(summed, torch.add, 0.0) / count, stride).to(x.dtype)


class MaxPoolNoIndices(torch.autograd.Function):
    """3×3 max-pool that keeps no int64 indices: backward finds each argmax by comparing input and output, both of
    which are kept anyway (the input is a node state, the output the folded BN's input)."""

    @staticmethod
    def forward(ctx, x, stride, backend):
        out = max_pool3x3(x, stride)
        ctx.save_for_backward(x, out)
        ctx.stride, ctx.backend = stride, backend
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):
        x, out = ctx.saved_tensors
        s = ctx.stride
        return fused.max_pool2d_backward_from_output(grad, x, out, [3, 3], [s, s], [1, 1], ctx.backend), None, None


def fast_pool(pool: nn.Module, backend=None):
    """The fast equivalent of a DARTS 3×3 pool (padding 1, square stride), or None for any other pool."""
    stride = pair(getattr(pool, "stride", None))
    if pair(getattr(pool, "kernel_size", None)) != [3, 3] or pair(pool.padding) != [1, 1] \
            or stride[0] != stride[1] or pool.ceil_mode:
        return None
    if isinstance(pool, nn.MaxPool2d) and pair(pool.dilation) == [1, 1] and not pool.return_indices:
        return lambda h: MaxPoolNoIndices.apply(h, stride[0], backend)
    if isinstance(pool, nn.AvgPool2d) and not pool.count_include_pad and pool.divisor_override is None:
        return lambda h: avg_pool3x3(h, stride[0])
    return None


# ---- Dropout ---------------------------------------------------------------------------------------------------

class BoolMaskDropout(torch.autograd.Function):
    """F.dropout(h, p, training=True) on a CPU tensor, 0 < p < 1: the same draws and the same numbers as PyTorch's
    CPU dropout (noise = bernoulli(1 - p) / (1 - p), h · noise), keeping the mask as bool, 1 byte an element, where
    PyTorch keeps the float noise (4 or 8); backward rebuilds the noise from it bit for bit."""

    @staticmethod
    def forward(ctx, h, p):
        noise = torch.empty_like(h).bernoulli_(1 - p)
        noise.div_(1 - p)
        ctx.save_for_backward(noise != 0)
        ctx.p = p
        return h * noise

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):
        mask, = ctx.saved_tensors
        return grad * mask.to(grad.dtype).div_(1 - ctx.p), None


def dropout(module: nn.Dropout, h: torch.Tensor) -> torch.Tensor:
    """module(h): BoolMaskDropout where it applies; on GPUs PyTorch's own (its fused dropout keeps a bool mask)."""
    p = module.p
    if module.training and 0 < p < 1 and not module.inplace and h.device.type == "cpu":
        return BoolMaskDropout.apply(h, p)
    return module(h)
