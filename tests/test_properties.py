"""Property-based tests (hypothesis): every kernel against the PyTorch reference on random shapes and arguments, and
the parsers of user input (genotype text and JSON, space files, configuration files): any input parses, or raises
stacnas' own UsageError — never another exception."""
import json

import pytest
import torch
import yaml
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from stacnas import fused, genotypes
from stacnas.errors import UsageError
from stacnas.fused import registry
from stacnas.runtime.config import resolve
from stacnas.search import SearchConfig
from stacnas.spaces import space_from_dict
from stacnas.train import TrainConfig

CPU = torch.device("cpu")
# the Triton interpreter takes seconds per call: the compiled and PyTorch backends get the examples
BACKENDS = [b for b in fused.op_backends("mixed_sum_into", CPU) if not registry.interpreted(b, CPU)]
# derandomized: the same examples on every run (CI reproducible); no example database written into the tree
SETTINGS = settings(max_examples=25, deadline=None, derandomize=True, database=None,
                    suppress_health_check=[HealthCheck.too_slow])
PARSERS = settings(SETTINGS, max_examples=300)  # parsing is cheap: many more examples


@st.composite
def mixed_sum_cases(draw):
    shape = tuple(draw(st.lists(st.integers(1, 6), min_size=2, max_size=4)))
    K = draw(st.integers(1, 5))
    normalize = draw(st.lists(st.booleans(), min_size=K, max_size=K))
    training = draw(st.booleans())
    seed = draw(st.integers(0, 2**16))
    return shape, normalize, training, seed


@SETTINGS
@given(mixed_sum_cases())
def test_mixed_sum_matches_the_reference_on_random_shapes(case):
    shape, normalize, training, seed = case
    g = torch.Generator().manual_seed(seed)
    K = len(normalize)
    xs = [(torch.randn(shape, generator=g, dtype=torch.float64) * 2 + 1).requires_grad_() for _ in range(K)]
    w = torch.randn(K, generator=g, dtype=torch.float64, requires_grad=True)
    rm = torch.randn(K, shape[1], generator=g, dtype=torch.float64)
    rv = torch.rand(K, shape[1], generator=g, dtype=torch.float64) + 0.5
    y_ref = fused.reference_mixed_sum(xs, w, normalize, rm, rv, training)[0]
    grad = torch.randn(y_ref.shape, generator=g, dtype=torch.float64)
    expected = torch.autograd.grad(y_ref, [*xs, w], grad)
    for backend in BACKENDS:
        y = fused.mixed_sum(xs, w, normalize, rm, rv, training, backend=backend)[0]
        torch.testing.assert_close(y, y_ref, rtol=1e-10, atol=1e-10)
        for ours, theirs in zip(torch.autograd.grad(y, [*xs, w], grad), expected):
            torch.testing.assert_close(ours, theirs, rtol=1e-9, atol=1e-9)


@SETTINGS
@given(st.integers(1, 3), st.integers(1, 4), st.integers(1, 9), st.integers(1, 9), st.integers(1, 3),
       st.integers(0, 1), st.integers(0, 2**16))
def test_max_pool_backward_matches_pytorch_on_random_shapes(n, c, h, w, stride, padding, seed):
    assume(min(h, w) + 2 * padding >= 3)  # a 3×3 window fits
    torch.manual_seed(seed)
    x = torch.randn(n, c, h, w, dtype=torch.float64).round()  # rounded: ties, where the argmax rule matters
    out, indices = torch.nn.functional.max_pool2d(x, 3, stride, padding, return_indices=True)
    grad = torch.randn_like(out)
    expected = torch.ops.aten.max_pool2d_with_indices_backward(grad, x, [3, 3], [stride] * 2, [padding] * 2, [1, 1],
                                                               False, indices)
    for backend in fused.op_backends("max_pool2d_backward_from_output", CPU):
        ours = fused.max_pool2d_backward_from_output(grad, x, out, [3, 3], [stride] * 2, [padding] * 2, backend)
        torch.testing.assert_close(ours, expected, rtol=0, atol=1e-12)


@SETTINGS
@given(st.integers(1, 3), st.integers(1, 4), st.integers(1, 9), st.integers(1, 9), st.integers(1, 5),
       st.integers(1, 3), st.integers(1, 2), st.integers(0, 3), st.integers(0, 2**16))
def test_depthwise_weight_grad_matches_pytorch_on_random_shapes(n, c, h, w, k, stride, dilation, padding, seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, c, h, w, generator=g, dtype=torch.float64)
    weight = torch.randn(c, 1, k, k, generator=g, dtype=torch.float64)
    assume(min(h, w) + 2 * padding >= dilation * (k - 1) + 1)  # the filter fits
    out = torch.nn.functional.conv2d(x, weight, None, stride, padding, dilation, c)
    grad = torch.randn(out.shape, generator=g, dtype=torch.float64)
    expected = torch.ops.aten.convolution_backward(grad, x, weight, None, [stride] * 2, [padding] * 2, [dilation] * 2,
                                                   False, [0, 0], c, [False, True, False])[1]
    for backend in fused.op_backends("depthwise_conv2d_weight_grad", CPU):
        ours = fused.depthwise_conv2d_weight_grad(grad, x, [k, k], [stride] * 2, [padding] * 2, [dilation] * 2,
                                                  backend)
        torch.testing.assert_close(ours, expected, rtol=1e-10, atol=1e-10)


@SETTINGS
@given(st.integers(1, 4), st.integers(1, 5), st.integers(1, 7), st.booleans(), st.integers(0, 2**16))
def test_batch_norm_kernels_match_pytorch_on_random_shapes(n, c, hw, training, seed):
    g = torch.Generator().manual_seed(seed)
    x = (torch.randn(n, c, hw, hw, generator=g, dtype=torch.float64) * 3 + 1).requires_grad_()
    grad = torch.randn(x.shape, generator=g, dtype=torch.float64)
    rm, rv = torch.randn(c, generator=g, dtype=torch.float64), torch.rand(c, generator=g, dtype=torch.float64) + .5
    out = torch.relu(torch.nn.functional.batch_norm(x, rm.clone(), rv.clone(), training=training, eps=1e-5))
    expected = torch.autograd.grad(out, x, grad)[0]
    for backend in fused.op_backends("batch_norm_relu_backward", CPU):
        mean, var = fused.batch_norm_stats(x, backend) if training else (rm, rv)
        if training:
            torch.testing.assert_close(mean, x.mean((0, 2, 3)))
            torch.testing.assert_close(var, x.var((0, 2, 3), unbiased=False))
        ours = fused.batch_norm_relu_backward(grad, x.detach(), mean, var, training, 1e-5, backend)
        torch.testing.assert_close(ours, expected)


# ---- parsers: any input parses or raises UsageError ----------------------------------------------------------

OP_NAMES = st.sampled_from(["sep_conv_3x3", "skip_connect", "none", "max_pool_3x3", "bogus", ""])
JSON_VALUES = st.recursive(st.none() | st.booleans() | st.integers(-10**20, 10**20) | st.floats() | st.text(max_size=8)
                           | OP_NAMES, lambda inner: st.lists(inner, max_size=5)
                           | st.dictionaries(st.text(max_size=8) | OP_NAMES, inner, max_size=5), max_leaves=30)


def _parses_or_refuses(fn, *args):
    try:
        fn(*args)
    except UsageError:
        pass


@PARSERS
@given(st.text(max_size=200))
def test_genotype_text_parses_or_is_refused(text):
    _parses_or_refuses(genotypes.parse_text, text)


@st.composite
def genotype_like_texts(draw):
    """Text close to a real genotype, mutated: where a parser's corner cases are."""
    pair = st.tuples(OP_NAMES, st.integers(-3, 12) | st.booleans() | st.floats(allow_nan=True))
    pairs = draw(st.lists(pair, max_size=10))
    concat = draw(st.sampled_from(["[2, 3, 4, 5]", "range(2, 6)", "range(2, 10**18)", "range(2, 99999999999999)",
                                   "range(-5)", "range(2)", "[]", "None", "'x'", "[2, 'a']", "range(1, 2, 3)"]))
    return f"Genotype(normal={pairs!r}, normal_concat={concat}, reduce={pairs!r}, reduce_concat={concat})"


@PARSERS
@given(genotype_like_texts())
def test_genotype_like_text_parses_or_is_refused(text):
    _parses_or_refuses(genotypes.parse_text, text)


@PARSERS
@given(st.dictionaries(st.sampled_from(["normal", "normal_concat", "reduce", "reduce_concat", "x"]), JSON_VALUES))
def test_genotype_json_parses_or_is_refused(data):
    _parses_or_refuses(genotypes.from_dict, json.loads(json.dumps(data)))


@PARSERS
@given(st.dictionaries(st.sampled_from(["name", "normal", "reduce", "clusters", "representatives", "x"]), JSON_VALUES))
def test_space_files_parse_or_are_refused(data):
    _parses_or_refuses(space_from_dict, data)


@pytest.mark.parametrize("cls, command", [(SearchConfig, "search"), (TrainConfig, "train")])
@PARSERS
@given(data=st.data())
def test_config_files_parse_or_are_refused(tmp_path_factory, cls, command, data):
    keys = st.sampled_from([f for f in cls.__dataclass_fields__] + ["bogus"])
    values = st.dictionaries(keys, JSON_VALUES, max_size=4)
    path = tmp_path_factory.mktemp("config") / "config.yaml"
    path.write_text(yaml.safe_dump(data.draw(values)))
    _parses_or_refuses(resolve, cls, command, None, str(path), {})
