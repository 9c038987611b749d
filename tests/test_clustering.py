import numpy as np
import pytest
import torch
import torch.nn as nn

from stacnas.nn import Supernet
from stacnas.search.clustering import (CovarianceAccumulator, average_correlation, build_clusters, cluster_ops,
                                       pick_representatives, record_correlations, render_report)
from stacnas.spaces import SearchSpace


@pytest.mark.parametrize("splits", [[1000], [1, 999], [300, 300, 400], [7] * 100 + [300]])
def test_covariance_accumulator_matches_numpy(splits):
    gen = torch.Generator().manual_seed(0)
    # large offsets and scales: the naive sum-of-squares formula would lose digits here
    x = torch.randn(sum(splits), 5, generator=gen, dtype=torch.float64) * torch.tensor([1, 10, 1e-3, 5, 1]) + 1e4
    x[:, 3] += 0.8 * x[:, 0]
    acc = CovarianceAccumulator(5)
    for chunk in x.split(splits):
        acc.update(chunk.float() if len(splits) == 2 else chunk)
    expected = np.cov(x.numpy(), rowvar=False)
    expected_corr = np.corrcoef(x.numpy(), rowvar=False)
    if len(splits) == 2:  # the fp32 input path: float32 rounding of the data, not of the accumulation
        expected = np.cov(x.float().double().numpy(), rowvar=False)
        expected_corr = np.corrcoef(x.float().double().numpy(), rowvar=False)
    np.testing.assert_allclose(acc.covariance().numpy(), expected, rtol=1e-7, atol=1e-10)
    np.testing.assert_allclose(acc.correlation().numpy(), expected_corr, rtol=1e-7, atol=1e-10)
    assert acc.n == sum(splits)


def test_zero_variance_gives_undefined_correlation():
    acc = CovarianceAccumulator(3)
    x = torch.randn(50, 3, dtype=torch.float64)
    x[:, 1] = 0.0
    acc.update(x)
    corr = acc.correlation()
    assert corr[1].isnan().all() and corr[:, 1].isnan().all() and not corr[0, 2].isnan()


def _planted(n=4000, seed=0):
    """Three latent signals; ops a* follow signal 1, b* signal 2, c alone."""
    gen = torch.Generator().manual_seed(seed)
    s1, s2, s3 = torch.randn(3, n, generator=gen, dtype=torch.float64)
    noise = lambda: 0.3 * torch.randn(n, generator=gen, dtype=torch.float64)  # noqa: E731
    cols = {"a1": s1 + noise(), "a2": -2 * s1 + noise(), "b1": s2 + noise(), "b2": s2 + noise(),
            "b3": 3 * s2 + noise(), "c": s3}
    return list(cols), torch.stack(list(cols.values()), dim=1)


def test_clustering_recovers_planted_clusters():
    ops, x = _planted()
    acc = CovarianceAccumulator(len(ops))
    for chunk in x.split(333):
        acc.update(chunk)
    groups, Z = cluster_ops(acc.correlation(), ops, threshold=0.5)
    assert sorted(groups) == [("a1", "a2"), ("b1", "b2", "b3"), ("c",)]  # a2 anti-correlated: |corr| counts
    groups, _ = cluster_ops(acc.correlation(), ops, threshold=None, count=2)
    assert ("c",) not in groups and len(groups) == 2
    assert Z.shape == (len(ops) - 1, 4)


def test_average_correlation_over_edges_with_different_ops():
    c1 = torch.tensor([[1.0, 0.5], [0.5, 1.0]], dtype=torch.float64)
    c2 = torch.tensor([[1.0, 0.1, 0.9], [0.1, 1.0, -0.3], [0.9, -0.3, 1.0]], dtype=torch.float64)
    mean = average_correlation([(("x", "y"), c1), (("x", "y", "z"), c2)], ["x", "y", "z"])
    assert mean[0, 1] == pytest.approx(0.3) and mean[0, 2] == pytest.approx(0.9) and mean[1, 2] == pytest.approx(-0.3)


def test_representatives():
    groups = [("a", "b"), ("c",)]
    assert pick_representatives(groups, "first", {}) == ["a", "c"]
    assert pick_representatives(groups, "alpha", {"a": 0.1, "b": 0.3, "c": 0.2}) == ["b", "c"]


class _Scaled(nn.Module):
    """A planted op: a fixed linear map of the input, times a scale, plus a little independent noise."""

    def __init__(self, weight, scale, stride):
        super().__init__()
        self.register_buffer("weight", weight)
        self.scale, self.stride = scale, stride

    def forward(self, x):
        y = nn.functional.conv2d(x[:, :, ::self.stride, ::self.stride], self.weight)
        return self.scale * y + 0.05 * torch.randn_like(y)


def test_supernet_recording_finds_planted_clusters():
    """Replace the candidates of every edge by planted ops: the skip-like group follows one random linear map of
    the input, the conv-like group another; recording on a real supernet must recover the two groups."""
    torch.manual_seed(0)
    ops = ("none", "max_pool_3x3", "avg_pool_3x3", "skip_connect", "sep_conv_3x3", "sep_conv_5x5", "noise")
    model = Supernet(SearchSpace("p", ops, ops), C=4, layers=3, nodes=2, num_classes=3, in_channels=1)
    for cell in model.cells:
        C = cell.preprocess1.op[1].out_channels
        f, g = torch.randn(C, C, 1, 1), torch.randn(C, C, 1, 1)
        inputs = [i for node in range(2) for i in range(2 + node)]  # edge -> input state, DARTS order
        for mixed, inp in zip(cell._ops, inputs):
            stride = 2 if cell.reduction and inp < 2 else 1
            for k, name in enumerate(mixed.primitives):
                if name in ("max_pool_3x3", "avg_pool_3x3", "skip_connect"):
                    mixed._ops[k] = _Scaled(f, 1.0 + k, stride)
                elif name.startswith("sep"):
                    mixed._ops[k] = _Scaled(g, -1.0 - k, stride)
    images = torch.randn(24, 1, 8, 8)
    per_type = record_correlations(model, images, batch_size=10, device="cpu")
    assert len(per_type["normal"]) == 2 and len(per_type["reduce"]) == 4  # 2 recorded edges per cell
    clusters, report = build_clusters(model, images, 10, "cpu", list(ops), 0.5, None, "first")
    assert set(clusters.groups) == {("max_pool_3x3", "avg_pool_3x3", "skip_connect"),
                                    ("sep_conv_3x3", "sep_conv_5x5"), ("noise",)}
    assert report["alone"] == ["none", "noise"] and "none" not in report["ops"]
    assert model.mode == "lean" and model.training  # recording restores the model
    text = render_report(report)
    assert "dendrogram" in text and "max3" in text
