import json

import torch

from stacnas.search import SearchConfig, chosen_clusters, run_search, stage1_space, stage2_space
from stacnas.spaces import BUILTIN_SPACES, PAPER_CLUSTERS, Clusters, SearchSpace
from stacnas.supernet import Supernet

TINY = dict(epochs=1, limit=64, channels=4, stage1_layers=3, stage2_layers=4, darts_layers=3, batch_size=32,
            w_lr=0.05, a_lr=3e-3)


def test_stage1_holds_none_and_representatives():
    space = stage1_space(BUILTIN_SPACES["darts"], PAPER_CLUSTERS, nodes=4)
    expected = ("none", "max_pool_3x3", "skip_connect", "sep_conv_3x3", "dil_conv_3x3")
    assert space.edge_ops("normal") == [expected] * 14 and space.edge_ops("reduce") == [expected] * 14


def test_stage1_uses_a_present_member_when_the_representative_is_missing():
    space = SearchSpace("x", ("avg_pool_3x3", "sep_conv_5x5"), ("max_pool_3x3",))
    stage1 = stage1_space(space, PAPER_CLUSTERS, nodes=1)
    assert stage1.edge_ops("normal", 1) == [("none", "avg_pool_3x3", "sep_conv_5x5")] * 2
    assert stage1.edge_ops("reduce", 1) == [("none", "max_pool_3x3")] * 2


def test_stage2_edges_follow_stage1_choices():
    stage1 = Supernet(stage1_space(BUILTIN_SPACES["darts"], PAPER_CLUSTERS, 4), C=4, layers=3)
    picks = torch.randint(1, 5, (14,))  # column of the winning representative (0 is `none`)
    with torch.no_grad():
        stage1.alpha_normal.zero_()
        stage1.alpha_normal[torch.arange(14), picks] = 1.0
        stage1.alpha_normal[:, 0] = 5.0  # a strong `none` must not decide the cluster
    choice = chosen_clusters(stage1, PAPER_CLUSTERS)
    assert choice["normal"] == [int(p) - 1 for p in picks]  # representatives are listed in cluster order
    stage2 = stage2_space(BUILTIN_SPACES["darts"], PAPER_CLUSTERS, choice, 4)
    for e, c in enumerate(choice["normal"]):
        assert stage2.edge_ops("normal")[e] == ("none", *PAPER_CLUSTERS.groups[c])


def test_single_member_clusters_give_single_op_edges():
    clusters = Clusters((("skip_connect",), ("sep_conv_3x3",)), ("skip_connect", "sep_conv_3x3"))
    choice = {"normal": [1] * 14, "reduce": [0] * 14}
    stage2 = stage2_space(BUILTIN_SPACES["s2"], clusters, choice, 4)
    assert stage2.edge_ops("normal") == [("none", "sep_conv_3x3")] * 14


def test_search_is_reproducible(tmp_path):
    runs = []
    for name in ("a", "b"):
        genotype = run_search(SearchConfig(**TINY, seed=7, device="cpu"), str(tmp_path / name))
        metrics = [json.loads(line) for line in (tmp_path / name / "metrics.jsonl").read_text().splitlines()]
        runs.append((genotype, [(m["train_loss"], m["alpha_softmax"]) for m in metrics]))
    assert runs[0] == runs[1]


def test_stage2_is_a_new_deeper_supernet(tmp_path):
    run_search(SearchConfig(**TINY, device="cpu"), str(tmp_path))
    s1 = torch.load(tmp_path / "stage1" / "supernet.pt", weights_only=True)
    s2 = torch.load(tmp_path / "stage2" / "supernet.pt", weights_only=True)
    assert s1["alpha_normal"].shape[1] == 5 and s2["alpha_normal"].shape[1] <= 3
    assert sum(1 for k in s2 if k.startswith("cells.")) > 0
    assert len([k for k in s2 if k.startswith("cells.3.")]) > 0  # 4 cells in stage 2, 3 in stage 1
    assert not any(k.startswith("cells.3.") for k in s1)
