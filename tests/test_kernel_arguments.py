"""Every fused op refuses bad arguments on every backend, with an error naming the problem, before touching memory:
through the dispatcher (a ValueError, for every backend) and as a direct call of a compiled op (a RuntimeError from
TORCH_CHECK). The cases include the ones that once corrupted the heap, died of SIGFPE or returned garbage."""
import pytest
import torch

from stacnas import fused
from stacnas.fused import compiled_backend

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
COMPILED = compiled_backend.LOAD_ERROR is None
COMPILED_CUDA = COMPILED and compiled_backend.cuda_built() and torch.cuda.is_available()


def _pool(device, dtype=torch.float32):
    x = torch.randn(2, 3, 8, 8, device=device, dtype=dtype)
    out = torch.nn.functional.max_pool2d(x, 3, 1, 1)
    return torch.randn_like(out), x, out


def _bad_max_pool(device):
    g, x, out = _pool(device)
    big = torch.randn(2, 3, 20, 20, device=device)
    return {
        "output larger than the input allows": ((big, x, big, [3, 3], [1, 1], [1, 1]), "is not what"),
        "fewer output planes than input planes": ((g[:, :1], x, out[:, :1], [3, 3], [1, 1], [1, 1]),
                                                  "same batch and channels"),
        "stride 0": ((g, x, out, [3, 3], [0, 1], [1, 1]), "above 0"),
        "padding over half the kernel": ((g, x, out, [3, 3], [1, 1], [2, 2]), "padding"),
        "grad of another dtype": ((g.double(), x, out, [3, 3], [1, 1], [1, 1]), "dtype and device"),
        "integer tensors": ((g.long(), x.long(), out.long(), [3, 3], [1, 1], [1, 1]), "floating point"),
        "3-D input": ((g[0], x[0], out[0], [3, 3], [1, 1], [1, 1]), "4-D"),
    }


def _bad_depthwise(device):
    x = torch.randn(2, 3, 9, 7, device=device)
    g = torch.randn(2, 3, 9, 7, device=device)  # kernel 3, padding 1, stride 1
    return {
        "stride 0": ((g, x, [3, 3], [0, 1], [1, 1], [1, 1]), "above 0"),
        "dilation 0": ((g, x, [3, 3], [1, 1], [1, 1], [0, 1]), "above 0"),
        "negative padding": ((g, x, [3, 3], [1, 1], [-1, 1], [1, 1]), "at least 0"),
        "grad of the wrong size": ((g[:, :, :5], x, [3, 3], [1, 1], [1, 1], [1, 1]), "is not what"),
        "grad with other channels": ((g[:, :2], x, [3, 3], [1, 1], [1, 1], [1, 1]), "same batch and channels"),
        "grad of another dtype": ((g.double(), x, [3, 3], [1, 1], [1, 1], [1, 1]), "dtype and device"),
    }


def _bad_batch_norm_relu(device):
    x = torch.randn(4, 3, 5, 5, device=device)
    g, mean, var = torch.randn_like(x), torch.zeros(3, device=device), torch.ones(3, device=device)
    return {
        "statistics of the wrong length": ((g, x, mean[:2], var[:2], True, 1e-5), "one value per channel"),
        "grad of another shape": ((g[:2], x, mean, var, True, 1e-5), "same shape"),
        "grad of another dtype": ((g.double(), x, mean, var, True, 1e-5), "dtype and device"),
        "integer statistics": ((g, x, mean.long(), var.long(), True, 1e-5), "floating point"),
        "1-D input": ((g.flatten(), x.flatten(), mean, var, True, 1e-5), "at least 2 dimensions"),
    }


def _bad_mixed_sum(device):
    xs = [torch.randn(2, 3, 4, 4, device=device) for _ in range(2)]
    w = torch.randn(2, device=device)
    out = torch.empty(2, 3, 4, 4, device=device)
    stats = torch.zeros(2, 3, device=device)
    return {
        "a weight missing": ((xs, w[:1], [False, False], None, None, True, 1e-5, out), "one entry per input"),
        "a flag missing": ((xs, w, [False], None, None, True, 1e-5, out), "one flag per input"),
        "inputs of two shapes": (([xs[0], xs[1][:, :2]], w, [False, False], None, None, True, 1e-5, out),
                                 "same shape"),
        "inputs of two dtypes": (([xs[0], xs[1].double()], w, [False, False], None, None, True, 1e-5, out),
                                 "dtype and device"),
        "eval without running statistics": ((xs, w, [True, False], None, None, False, 1e-5, out),
                                            "needs running_mean and running_var"),
        "running statistics of the wrong shape": ((xs, w, [True, False], stats[:, :2], stats[:, :2], False, 1e-5,
                                                   out), "(inputs, channels) = (2, 3)"),
        "out of another shape": ((xs, w, [False, False], None, None, True, 1e-5, out[:, :2]), "shape"),
        "out scattered in memory": ((xs, w, [False, False], None, None, True, 1e-5,
                                     torch.empty(2, 3, 4, 4, device=device).transpose(2, 3)), "contiguously"),
    }


def _bad_mixed_sum_backward(device):
    xs = [torch.randn(2, 3, 4, 4, device=device) for _ in range(2)]
    w, g = torch.randn(2, device=device), torch.randn(2, 3, 4, 4, device=device)
    mean, var = torch.zeros(2, 3, device=device), torch.ones(2, 3, device=device)
    return {
        "grad of another shape": ((g[:, :2], xs, w, [True, False], mean, var, True, 1e-5), "grad"),
        "statistics of the wrong shape": ((g, xs, w, [True, False], mean[:1], var[:1], True, 1e-5),
                                          "(inputs, channels) = (2, 3)"),
        "grad of another dtype": ((g.double(), xs, w, [True, False], mean, var, True, 1e-5), "dtype and device"),
    }


def _bad_conv_chain(device):
    x, w = torch.randn(2, 3, 9, 7, device=device), torch.randn(3, 1, 3, 3, device=device)
    g = torch.randn(2, 3, 9, 7, device=device)  # a depthwise 3×3, padding 1, stride 1
    mean, var = torch.zeros(3, device=device), torch.ones(3, device=device)

    def args(grad=g, inputs=(x,), weights=(w,), geometry=(1, 1, 1, 1, 1, 1, 3), mean=(None,), var=(None,)):
        return (grad, list(inputs), list(weights), list(geometry), [True], list(mean), list(var), [True], [1e-5],
                True, [True], [False])
    return {
        "a weight missing": (args(weights=()), "one entry per input"),
        "geometry too short": (args(geometry=(1, 1, 1, 1, 1, 1)), "7 numbers per step"),
        "grad of another dtype": (args(grad=g.double()), "dtype and device"),
        "grad of the wrong size": (args(grad=g[:, :, :5]), "is not what the conv gives"),
        "stride 0": (args(geometry=(0, 1, 1, 1, 1, 1, 3)), "above 0"),
        "a weight that does not fit the groups": (args(geometry=(1, 1, 1, 1, 1, 1, 1)), "does not fit input"),
        "3-D input": (args(grad=g[0], inputs=(x[0],)), "4-D"),
        "mean without var": (args(mean=(mean,)), "both mean and var"),
        "statistics of the wrong length": (args(mean=(mean[:2],), var=(var[:2],)), "one value per input channel"),
    }


OPS = {"max_pool2d_backward_from_output": _bad_max_pool, "conv_chain_backward": _bad_conv_chain, "depthwise_conv2d_weight_grad": _bad_depthwise,
       "batch_norm_relu_backward": _bad_batch_norm_relu, "mixed_sum_into": _bad_mixed_sum,
       "mixed_sum_backward": _bad_mixed_sum_backward}
CASES = [pytest.param(op, device, case, id=f"{op}-{device}-{case}") for op, make in OPS.items() for device in DEVICES
         for case in make("cpu")]


@pytest.mark.parametrize("op, device, case", CASES)
def test_the_dispatcher_refuses_bad_arguments_on_every_backend(op, device, case):
    args, message = OPS[op](device)[case]
    for backend in fused.op_backends(op, device):
        with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
            getattr(fused, op)(*args, backend=backend)


@pytest.mark.skipif(not COMPILED, reason="stacnas._C is not built")
@pytest.mark.parametrize("op, device, case", [c for c in CASES if ("cpp" if c.values[1] == "cpu" else "cuda") in
                                               fused.OPS[c.values[0]] and (c.values[1] == "cpu" or COMPILED_CUDA)])
def test_the_compiled_ops_refuse_bad_arguments(op, device, case):
    """Direct calls of torch.ops.stacnas.*: the CPU kernels, and the CUDA ones on a GPU."""
    args, message = OPS[op](device)[case]
    with pytest.raises(RuntimeError, match=message.replace("(", r"\(").replace(")", r"\)")):
        getattr(torch.ops.stacnas, op)(*args)


def test_a_bad_argument_leaves_memory_alone():
    """What once corrupted the heap: an output larger than the input allows, refused before anything is written;
    the process lives on and computes correctly."""
    g, x, out = _pool("cpu")
    big = torch.randn(2, 3, 20, 20)
    with pytest.raises(RuntimeError):
        torch.ops.stacnas.max_pool2d_backward_from_output(big, x, big, [3, 3], [1, 1], [1, 1])
    _, indices = torch.nn.functional.max_pool2d(x, 3, 1, 1, return_indices=True)
    expected = torch.ops.aten.max_pool2d_with_indices_backward(g, x, [3, 3], [1, 1], [1, 1], [1, 1], False, indices)
    torch.testing.assert_close(fused.max_pool2d_backward_from_output(g, x, out, [3, 3], [1, 1], [1, 1]), expected)
