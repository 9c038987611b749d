import pytest
import torch

from stacnas.nn import Supernet, count_parameters
from stacnas.spaces import BUILTIN_SPACES, SearchSpace


def test_darts_supernet_has_darts_parameter_count():
    model = Supernet(BUILTIN_SPACES["darts"], C=16, layers=8, num_classes=10)
    assert count_parameters(model.weights()) == 1_930_618
    assert [a.shape for a in model.alphas()] == [(14, 8), (14, 8)]


def test_weights_and_alphas_partition_parameters():
    model = Supernet(BUILTIN_SPACES["s3"], C=4, layers=3)
    ids = lambda ps: {id(p) for p in ps}  # noqa: E731
    assert ids(model.weights()).isdisjoint(ids(model.alphas()))
    assert ids(model.weights()) | ids(model.alphas()) == ids(model.parameters())


def test_reduction_cells_at_thirds():
    model = Supernet(BUILTIN_SPACES["s2"], C=4, layers=14)
    assert [i for i, c in enumerate(model.cells) if c.reduction] == [4, 9]


def _uneven_space():
    normal = tuple(("skip_connect",) if e % 3 == 0 else ("none", "skip_connect", "sep_conv_3x3", "max_pool_3x3")
                   for e in range(14))
    return SearchSpace("uneven", normal, ("max_pool_3x3", "skip_connect"))


def test_masked_alpha_gives_zero_weight_outside_an_edge():
    model = Supernet(_uneven_space(), C=4, layers=3)
    with torch.no_grad():
        model.alpha_normal.normal_()
    w = model.edge_weights("normal")
    assert w.shape == (14, 4)
    for e in range(14):
        k = 1 if e % 3 == 0 else 4
        assert torch.all(w[e, k:] == 0)
        assert torch.allclose(w[e, :k].sum(), torch.tensor(1.0))
    # a single-op edge has weight exactly 1 on its op
    assert torch.equal(w[0, :1], torch.ones(1))


def test_uneven_edges_run_forward_and_backward():
    model = Supernet(_uneven_space(), C=4, layers=3, in_channels=1, num_classes=3)
    x = torch.randn(2, 1, 9, 9)
    model(x).sum().backward()
    assert model.alpha_normal.grad is not None
    # masked entries of α get no gradient
    assert torch.all(model.alpha_normal.grad[0, 1:] == 0)
    assert model.alpha_normal.grad[1].abs().sum() > 0


def test_mixed_op_is_weighted_sum_of_ops():
    model = Supernet(BUILTIN_SPACES["s2"], C=4, layers=3)
    edge = model.cells[0]._ops[2]
    x = torch.randn(2, 4, 6, 6)
    w = torch.tensor([0.3, 0.7])
    expected = 0.3 * edge._ops[0](x) + 0.7 * edge._ops[1](x)
    assert torch.allclose(edge(x, w), expected, atol=1e-6)


def test_genotype_follows_alpha():
    model = Supernet(BUILTIN_SPACES["darts"], C=4, layers=3)
    with torch.no_grad():
        model.alpha_normal.zero_()
        model.alpha_normal[:, 0] = 10.0  # `none` dominates everywhere but is never chosen
        model.alpha_normal[:, 4] = 1.0  # sep_conv_3x3 next
    genotype = model.genotype()
    assert all(op == "sep_conv_3x3" for op, _ in genotype.normal)
    assert genotype.normal_concat == [2, 3, 4, 5]


def test_too_shallow_is_refused():
    with pytest.raises(ValueError, match="at least 3 cells"):
        Supernet(BUILTIN_SPACES["darts"], layers=2)
