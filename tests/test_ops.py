import pytest
import torch

from stacnas.ops import OPS, PRIMITIVES, FactorizedReduce, Identity, Noise, Zero, final_op, search_op

ALL_OPS = sorted(OPS)


@pytest.mark.parametrize("name", ALL_OPS)
@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("size", [8, 9])
def test_output_shape_follows_stride(name, stride, size):
    C = 6
    x = torch.randn(3, C, size, size)
    for op in (search_op(name, C, stride), final_op(name, C, stride)):
        y = op(x)
        expected = size if stride == 1 else (size + 1) // 2
        assert y.shape == (3, C, expected, expected)
        assert torch.isfinite(y).all()


def test_darts_primitives_in_darts_order():
    assert PRIMITIVES == ("none", "max_pool_3x3", "avg_pool_3x3", "skip_connect", "sep_conv_3x3",
                          "sep_conv_5x5", "dil_conv_3x3", "dil_conv_5x5")


@pytest.mark.parametrize("name", ["sep_conv_3x3", "sep_conv_5x5", "dil_conv_3x3", "dil_conv_5x5", "nor_conv_3x3"])
def test_bn_affine_only_in_final_form(name):
    bns = lambda m: [mod for mod in m.modules() if isinstance(mod, torch.nn.BatchNorm2d)]  # noqa: E731
    assert bns(search_op(name, 4, 1)) and all(not bn.affine for bn in bns(search_op(name, 4, 1)))
    assert all(bn.affine for bn in bns(final_op(name, 4, 1)))


def test_pools_get_bn_only_in_search_form():
    searched = search_op("max_pool_3x3", 4, 1)
    assert isinstance(searched[1], torch.nn.BatchNorm2d) and not searched[1].affine
    assert isinstance(final_op("max_pool_3x3", 4, 1), torch.nn.MaxPool2d)


def test_structure_matches_darts_definitions():
    sep = final_op("sep_conv_5x5", 4, 2)
    convs = [m for m in sep.op if isinstance(m, torch.nn.Conv2d)]
    assert [c.kernel_size for c in convs] == [(5, 5), (1, 1), (5, 5), (1, 1)]
    assert [c.stride for c in convs] == [(2, 2), (1, 1), (1, 1), (1, 1)]
    assert convs[0].groups == 4 and convs[0].padding == (2, 2)
    for name, k, pad in (("dil_conv_3x3", 3, 2), ("dil_conv_5x5", 5, 4)):
        conv = [m for m in final_op(name, 4, 1).op if isinstance(m, torch.nn.Conv2d)][0]
        assert conv.kernel_size == (k, k) and conv.dilation == (2, 2) and conv.padding == (pad, pad)
    avg = final_op("avg_pool_3x3", 4, 1)
    assert avg.count_include_pad is False
    assert isinstance(final_op("skip_connect", 4, 1), Identity)
    assert isinstance(final_op("skip_connect", 4, 2), FactorizedReduce)


def test_avg_pool_excludes_padding():
    x = torch.ones(1, 1, 4, 4)
    assert torch.equal(final_op("avg_pool_3x3", 1, 1)(x), x)


def test_none_is_zero_of_strided_shape():
    x = torch.randn(2, 3, 7, 7)
    assert torch.equal(Zero(2)(x), torch.zeros(2, 3, 4, 4))
    assert torch.equal(Zero(1)(x), torch.zeros_like(x))


def test_noise_is_standard_normal_and_ignores_input():
    x = torch.zeros(64, 4, 16, 16)
    y = Noise(1)(x)
    assert abs(y.mean().item()) < 0.02 and abs(y.std().item() - 1) < 0.02
    assert Noise(2)(x).shape == (64, 4, 8, 8)


def test_factorized_reduce_shifts_second_half():
    fr = FactorizedReduce(2, 4, affine=False)
    with torch.no_grad():
        fr.conv_1.weight.fill_(1.0)
        fr.conv_2.weight.fill_(1.0)
    x = torch.arange(16.0).reshape(1, 1, 4, 4).repeat(1, 2, 1, 1)
    fr.bn.eval()  # running stats 0/1: output = cat(conv_1(x), conv_2(x shifted)) up to BN eps
    y = fr(x)
    assert torch.allclose(y[0, 0], 2 * x[0, 0, ::2, ::2], atol=1e-3)
    assert torch.allclose(y[0, 2], 2 * x[0, 0, 1::2, 1::2], atol=1e-3)


def test_unknown_op_is_named():
    with pytest.raises(ValueError, match="unknown operation 'conv_9x9'"):
        search_op("conv_9x9", 4, 1)
