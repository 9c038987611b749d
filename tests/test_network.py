import pytest
import torch

from stacnas import genotypes
from stacnas.errors import UsageError
from stacnas.genotypes import DARTS_V1, DARTS_V2, PDARTS
from stacnas.nn import count_parameters
from stacnas.ops import Identity
from stacnas.train.network import AuxiliaryHead, NetworkCIFAR, NetworkImageNet, drop_path


def test_darts_v2_cifar_parameter_count():
    model = NetworkCIFAR(DARTS_V2, C=36, num_classes=10, layers=20, auxiliary=True)
    assert count_parameters(model.weights_without_auxiliary()) == 3_349_342
    assert count_parameters(model.auxiliary_head.parameters()) > 0


def test_darts_v2_imagenet_parameter_count():
    model = NetworkImageNet(DARTS_V2, C=48, num_classes=1000, layers=14, auxiliary=True)
    assert count_parameters(model.weights_without_auxiliary()) == 4_718_752


@pytest.mark.parametrize("name, network, C, classes, layers, expected", [
    ("STACNAS_C10", NetworkCIFAR, 36, 10, 20, 3_714_382),
    ("STACNAS_C100", NetworkCIFAR, 36, 100, 20, 4_033_072),
    ("STACNAS_IMAGENET", NetworkImageNet, 48, 1000, 14, 5_715_040),  # the paper's table: 5.7M
])
def test_stacnas_published_cells_parameter_counts(name, network, C, classes, layers, expected):
    model = network(genotypes.load(name), C=C, num_classes=classes, layers=layers, auxiliary=True)
    assert count_parameters(model.weights_without_auxiliary()) == expected


def test_a_genotype_keeping_none_builds_a_zero_edge():
    """As DARTS' model.py: `none` becomes a zero op; the node is then its other edge alone."""
    pairs = list(DARTS_V2.normal)
    pairs[7] = ("none", 2)  # node 3: skip_connect(0) + none
    keeping = DARTS_V2._replace(normal=pairs)
    torch.manual_seed(0)
    with_zero = NetworkCIFAR(keeping, C=4, num_classes=3, layers=3, auxiliary=False).eval()
    torch.manual_seed(0)
    full = NetworkCIFAR(DARTS_V2, C=4, num_classes=3, layers=3, auxiliary=False).eval()
    dil = full.cells[0]._ops[7]
    assert count_parameters(full.parameters()) - count_parameters(with_zero.parameters()) == \
        count_parameters(dil.parameters())
    x = torch.randn(2, 3, 16, 16)
    cell = with_zero.cells[0]
    s0 = s1 = with_zero.stem(x)
    states = [cell.preprocess0(s0), cell.preprocess1(s1)]
    assert torch.count_nonzero(cell._ops[7](states[1])) == 0
    assert with_zero(x)[0].isfinite().all()


def test_cifar_forward_with_auxiliary_in_training_only():
    model = NetworkCIFAR(PDARTS, C=8, num_classes=7, layers=5, auxiliary=True)
    model.train()
    logits, aux = model(torch.randn(2, 3, 32, 32))
    assert logits.shape == (2, 7) and aux.shape == (2, 7)
    model.eval()
    logits, aux = model(torch.randn(2, 3, 32, 32))
    assert aux is None


def test_imagenet_stem_reduces_by_eight():
    model = NetworkImageNet(DARTS_V1, C=8, num_classes=5, layers=3, auxiliary=False)
    assert model.stem1(model.stem0(torch.randn(1, 3, 64, 64))).shape[-1] == 8


def test_drop_path_zeroes_whole_samples_and_rescales():
    torch.manual_seed(0)
    x = torch.ones(4000, 2, 3, 3)
    y = drop_path(x, 0.25)
    per_sample = y.flatten(1)
    assert per_sample.unique().tolist() == pytest.approx([0.0, 1 / 0.75])
    assert torch.all(per_sample.min(1).values == per_sample.max(1).values)
    assert abs((per_sample[:, 0] == 0).float().mean().item() - 0.25) < 0.03
    assert drop_path(x, 0.0) is x


def test_drop_path_spares_identity_ops():
    model = NetworkCIFAR(DARTS_V2, C=4, num_classes=3, layers=3, auxiliary=False)
    cell = model.cells[0]
    calls = []
    import stacnas.train.network as network

    original = network.drop_path
    network.drop_path = lambda h, p: calls.append(h.shape) or original(h, p)
    try:
        model.train()
        model.drop_path_prob = 0.2
        model(torch.randn(2, 3, 8, 8))
    finally:
        network.drop_path = original
    identities = sum(isinstance(op, Identity) for c in model.cells for op in c._ops)
    # cells: normal, reduce, reduce; DARTS_V2 has 2 skips in the normal cell and 3 stride-1 skips in the reduce cell
    assert identities == 2 + 3 + 3
    assert len(calls) == sum(len(c._ops) for c in model.cells) - identities
    assert isinstance(cell._ops[5], Identity)


def test_auxiliary_head_shapes():
    assert AuxiliaryHead(16, 10)(torch.randn(2, 16, 8, 8)).shape == (2, 10)
    assert AuxiliaryHead(16, 10, imagenet=True)(torch.randn(2, 16, 7, 7)).shape == (2, 10)


@pytest.mark.parametrize("in_channels, size", [(1, 8), (1, 28), (3, 32)])
def test_small_inputs_and_channels(in_channels, size):
    model = NetworkCIFAR(DARTS_V2, C=4, num_classes=10, layers=3, auxiliary=False, in_channels=in_channels)
    logits, _ = model(torch.randn(2, in_channels, size, size))
    assert logits.shape == (2, 10)


@pytest.mark.parametrize("network", [NetworkCIFAR, NetworkImageNet])
def test_darts_positional_order_is_accepted(network):
    """DARTS' train.py builds Network(C, num_classes, layers, auxiliary, genotype), with its own Genotype namedtuple
    and concat as a range."""
    from collections import namedtuple

    TheirGenotype = namedtuple("Genotype", "normal normal_concat reduce reduce_concat")
    theirs = TheirGenotype(DARTS_V2.normal, range(2, 6), DARTS_V2.reduce, range(2, 6))
    torch.manual_seed(0)
    darts_order = network(16, 10, 5, True, theirs)
    torch.manual_seed(0)
    ours = network(DARTS_V2, C=16, num_classes=10, layers=5, auxiliary=True)
    assert [n for n, _ in darts_order.named_parameters()] == [n for n, _ in ours.named_parameters()]
    assert all(torch.equal(a, b) for a, b in zip(darts_order.parameters(), ours.parameters()))


def test_neither_order_is_refused_naming_both():
    with pytest.raises(UsageError, match=r"takes \(genotype, C, num_classes, layers, auxiliary\), or "
                                                    r"DARTS' order"):
        NetworkCIFAR(16, 10, 5, True, "DARTS_V2")
