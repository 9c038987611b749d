import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from stacnas.nn import Supernet
from stacnas.search import SearchConfig
from stacnas.search.clustering import (CKAAccumulator, CovarianceAccumulator, average_correlation, build_clusters,
                                       cluster_ops, pick_representatives, record_correlations, render_report)
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


def _share_weights(sep3: nn.Module, sep5: nn.Module, noise: float) -> None:
    """Make a sep_conv_5x5 compute nearly what a sep_conv_3x3 does: its 5×5 depthwise kernels are the 3×3 ones
    zero-padded (the same convolution, as padding 2 against 1 keeps the centre aligned) plus `noise` on the ring;
    its pointwise kernels are copied."""
    with torch.no_grad():
        for small, large in zip(sep3.op, sep5.op):
            if isinstance(small, nn.Conv2d) and small.kernel_size == (3, 3):
                ring = noise * small.weight.std() * torch.randn_like(large.weight)
                ring[:, :, 1:4, 1:4] = 0.0
                large.weight.copy_(ring)
                large.weight[:, :, 1:4, 1:4] += small.weight
            elif isinstance(small, nn.Conv2d):
                large.weight.copy_(small.weight)


@pytest.mark.parametrize("statistic", ["element", "sample", "cka"])
def test_auto_clustering_groups_convolutions_that_share_most_weights(statistic):
    """Functional similarity planted in real ops: on every edge sep_conv_5x5 shares sep_conv_3x3's weights (with a
    little noise); dil_conv_3x3 keeps its own. Automatic clustering, cut at the default threshold, puts the two
    separable convolutions together and the dilated one apart; without the planting (fresh weights) the two stay
    apart."""
    ops = ("none", "skip_connect", "sep_conv_3x3", "sep_conv_5x5", "dil_conv_3x3")
    images = torch.randn(32, 1, 8, 8, generator=torch.Generator().manual_seed(1))

    def groups(plant: bool):
        torch.manual_seed(0)
        model = Supernet(SearchSpace("p", ops, ops), C=4, layers=3, nodes=2, num_classes=3, in_channels=1)
        if plant:
            for cell in model.cells:
                for mixed in cell._ops:
                    names = list(mixed.primitives)
                    _share_weights(mixed._ops[names.index("sep_conv_3x3")], mixed._ops[names.index("sep_conv_5x5")],
                                   noise=0.1)
        clusters, report = build_clusters(model, images, 16, "cpu", list(ops), SearchConfig().cluster_threshold, None,
                                          "first", statistic)
        assert report["statistic"] == statistic
        return clusters.groups

    planted = groups(plant=True)
    together = next(g for g in planted if "sep_conv_3x3" in g)
    assert "sep_conv_5x5" in together and "dil_conv_3x3" not in together
    fresh = groups(plant=False)
    assert "sep_conv_5x5" not in next(g for g in fresh if "sep_conv_3x3" in g)


@pytest.mark.parametrize("splits", [[40], [1, 39], [13, 13, 14]])
def test_sample_statistic_centres_each_position_over_samples(splits):
    """The `sample` statistic: with one mean per feature position, the co-moment is the sum over positions of each
    position's co-moment over the samples, whatever the batches."""
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(40, 6, 3, generator=gen, dtype=torch.float64) + torch.linspace(-50, 50, 6)[None, :, None]
    acc = CovarianceAccumulator(3)
    for chunk in x.split(splits):
        acc.update(chunk)
    centred = x - x.mean(0)
    expected = torch.einsum("npi,npj->ij", centred, centred)
    torch.testing.assert_close(acc.m2, expected, rtol=1e-10, atol=1e-10)
    # the element statistic over the same data centres by one mean and so sees the positions' offsets
    flat = CovarianceAccumulator(3)
    flat.update(x.reshape(-1, 3))
    assert (flat.m2.diagonal() > 10 * acc.m2.diagonal()).all()


def test_cka_is_linear_cka_and_ignores_a_rotation_of_channels():
    gen = torch.Generator().manual_seed(5)
    x = torch.randn(500, 6, generator=gen, dtype=torch.float64)
    rotation, _ = torch.linalg.qr(torch.randn(6, 6, generator=gen, dtype=torch.float64))
    other = torch.randn(500, 6, generator=gen, dtype=torch.float64)
    acc = CKAAccumulator(3)
    for chunk in torch.stack([x, 3 * x @ rotation + 1, other], dim=1).split([100, 250, 150]):
        acc.update(chunk)
    cka = acc.correlation()

    def linear_cka(a, b):  # Kornblith et al.'s formula on centred data
        a, b = a - a.mean(0), b - b.mean(0)
        return ((a.T @ b).norm() ** 2 / ((a.T @ a).norm() * (b.T @ b).norm())).item()

    assert cka[0, 1] == pytest.approx(1.0, abs=1e-10)
    assert cka[0, 2] == pytest.approx(linear_cka(x, other), rel=1e-10)
    assert cka[0, 2] < 0.2 and cka.diagonal().tolist() == pytest.approx([1.0] * 3)


def test_outputs_before_the_trailing_batchnorm():
    from stacnas.ops import search_op
    from stacnas.search.clustering import without_trailing_bn

    sep, pool, skip = search_op("sep_conv_3x3", 4, 1), search_op("max_pool_3x3", 4, 1), search_op("skip_connect", 4, 1)
    assert not isinstance(without_trailing_bn(sep)[-1], nn.BatchNorm2d) and len(without_trailing_bn(sep)) == 7
    assert isinstance(without_trailing_bn(pool)[0], nn.MaxPool2d) and len(without_trailing_bn(pool)) == 1
    assert without_trailing_bn(skip) is skip


def test_similarity_study_measures_every_variant_at_every_milestone(tmp_path):
    from stacnas.names import CLUSTER_STATISTICS
    from stacnas.runtime.config import resolve
    from stacnas.search import SearchConfig
    from stacnas.search.run import run_similarity_study

    cfg = resolve(SearchConfig, "search", "quick", None, {"limit": 64, "channels": 4, "cluster_layers": 3,
                                                         "cluster_images": 16, "batch_size": 32})
    variants = [(s, b) for s in CLUSTER_STATISTICS for b in (False, True) if not (b and s == "gradient")]
    records = run_similarity_study(cfg, str(tmp_path / "run"), [1, 2], variants)
    assert [(r["epochs"], r["statistic"], r["before_bn"]) for r in records] == [(e, s, b) for e in (1, 2)
                                                                                 for s, b in variants]
    for r in records:
        assert r["ops"] == ["max_pool_3x3", "avg_pool_3x3", "skip_connect", "sep_conv_3x3", "sep_conv_5x5",
                            "dil_conv_3x3", "dil_conv_5x5"]
        assert isinstance(r["paper_groups"], bool)
        assert all(v is None or -1.0 <= v <= 1.0 for row in r["correlation"]["mean"] for v in row)
    cka = [r for r in records if r["statistic"] == "cka"]
    assert all(v is None or v >= 0.0 for r in cka for row in r["correlation"]["mean"] for v in row)
    # the same warm-up: one metrics line per epoch
    assert len((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()) == 2


def test_the_gradient_statistic_observes_each_ops_alpha_gradient(monkeypatch):
    """Each mini-batch's observation on an edge is <dL/dm, o_k> per op; summed over the cells of a type they are
    dL/dw of the edge weights the cells share (autograd, with those weights made leaves). The model is left as it
    was: mode, training flag, running statistics, no gradients."""
    from stacnas.names import CELL_TYPES
    from stacnas.nn import Supernet
    from stacnas.nn.batchnorm import frozen_running_stats
    from stacnas.search import clustering
    from stacnas.spaces import BUILTIN_SPACES

    torch.manual_seed(0)
    model = Supernet(BUILTIN_SPACES["darts"], C=4, layers=3, num_classes=5).double()
    images = torch.randn(12, 3, 8, 8, dtype=torch.float64)
    labels = torch.randint(0, 5, (12,))
    observed = []

    class Recording(CovarianceAccumulator):
        def update(self, x):
            observed.append(x.clone())
            super().update(x)
    monkeypatch.setattr(clustering, "CovarianceAccumulator", Recording)
    stats_before = {k: v.clone() for k, v in model.state_dict().items()}
    per_type = clustering.record_gradient_correlations(model, images, labels, 4, "cpu")
    assert model.mode == "lean" and model.training and all(p.grad is None for p in model.parameters())
    assert all(torch.equal(v, stats_before[k]) for k, v in model.state_dict().items())
    recorded = clustering._recorded(model)
    assert len(observed) == 3 * len(recorded) and len(per_type["normal"]) == 2 and len(per_type["reduce"]) == 4
    primitives = list(recorded[0][1].primitives)
    for b in range(3):
        leaves = {t: model.edge_weights(t).detach().requires_grad_() for t in CELL_TYPES}
        with monkeypatch.context() as patch, frozen_running_stats(model):
            patch.setattr(model, "edge_weights", lambda t: leaves[t])
            model.set_mode("reference")
            loss = F.cross_entropy(model(images[4 * b:4 * b + 4]), labels[4 * b:4 * b + 4])
            model.set_mode("lean")
        expected = dict(zip(CELL_TYPES, torch.autograd.grad(loss, [leaves[t] for t in CELL_TYPES])))
        summed = {}
        for (cell_type, mixed, ops), x in zip(recorded, observed[b * len(recorded):(b + 1) * len(recorded)]):
            cell = next(c for c in model.cells if any(m is mixed for m in c._ops))
            e = [i for i, m in enumerate(cell._ops) if m is mixed][0]
            summed[cell_type, e] = summed.get((cell_type, e), 0) + x[0]
            assert [primitives[k] for k in ops] == [p for p in primitives if p not in ("none", "noise")]
        for (cell_type, e), value in summed.items():
            ops = [k for k, p in enumerate(primitives) if p not in ("none", "noise")]
            assert expected[cell_type][e, ops].abs().max() > 0
            torch.testing.assert_close(value, expected[cell_type][e, ops], rtol=1e-10, atol=1e-12)
