import json

import pytest
import torch

from stacnas import genotypes
from stacnas.nn import Supernet
from stacnas.search import SearchConfig, run_search
from stacnas.search.stages import chosen_clusters, random_genotype, resolve_clusters, stage1_space, stage2_space
from stacnas.spaces import BUILTIN_SPACES, PAPER_CLUSTERS, Clusters, SearchSpace

TINY = dict(epochs=1, limit=64, channels=4, stage1_layers=3, stage2_layers=4, darts_layers=3, batch_size=32,
            w_lr=0.05, a_lr=3e-3, report=False)


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
        result = run_search(SearchConfig(**TINY, seed=7, device="cpu"), str(tmp_path / name))
        metrics = [json.loads(line) for line in (tmp_path / name / "metrics.jsonl").read_text().splitlines()]
        runs.append((result.genotype, [(m["train_loss"], m["alpha_softmax"]) for m in metrics]))
    assert runs[0] == runs[1]


def test_stage2_is_a_new_deeper_supernet(tmp_path):
    run_search(SearchConfig(**TINY, device="cpu"), str(tmp_path))
    s1 = torch.load(tmp_path / "stage1" / "supernet.pt", weights_only=True)
    s2 = torch.load(tmp_path / "stage2" / "supernet.pt", weights_only=True)
    assert s1["alpha_normal"].shape[1] == 5 and s2["alpha_normal"].shape[1] <= 3
    assert len([k for k in s2 if k.startswith("cells.3.")]) > 0  # 4 cells in stage 2, 3 in stage 1
    assert not any(k.startswith("cells.3.") for k in s1)
    assert not (tmp_path / "stage1" / "checkpoint.pt").exists()  # a finished stage keeps its weights only


def test_outputs_and_metrics(tmp_path):
    run_search(SearchConfig(**{**TINY, "epochs": 2}, device="cpu"), str(tmp_path))
    for name in ("genotype.json", "genotype.txt", "clusters.json", "config.json", "environment.json",
                 "summary.json", "stage1/choice.json", "stage1/space.json", "stage2/space.json"):
        assert (tmp_path / name).is_file(), name
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [(r["stage"], r["epoch"]) for r in records] == [("stage1", 1), ("stage1", 2), ("stage2", 1), ("stage2", 2)]
    for r in records:
        assert {"train_loss", "train_acc", "lr", "seconds", "peak_rss_mib", "alpha_softmax"} <= set(r)
        for rows in r["alpha_softmax"].values():
            assert all(abs(sum(row) - 1) < 1e-6 for row in rows)
    assert records[1]["lr"] < records[0]["lr"]  # cosine schedule
    assert json.loads((tmp_path / "clusters.json").read_text())["source"] == "paper"


def test_random_method_gives_a_seeded_valid_cell(tmp_path):
    for space_name in ("darts", "s1", "s3"):
        space = BUILTIN_SPACES[space_name]
        g = random_genotype(space, 4, seed=3)
        assert g == random_genotype(space, 4, seed=3) and g != random_genotype(space, 4, seed=4)
        for cell_type in ("normal", "reduce"):
            pairs, edges, offset = getattr(g, cell_type), space.edge_ops(cell_type), 0
            for node in range(4):
                (op_a, a), (op_b, b) = pairs[2 * node:2 * node + 2]
                assert a != b and 0 <= a < 2 + node and 0 <= b < 2 + node
                assert op_a in edges[offset + a] and op_b in edges[offset + b] and "none" not in (op_a, op_b)
                offset += 2 + node
    result = run_search(SearchConfig(method="random", space="s1", seed=3), str(tmp_path))
    assert genotypes.load(str(tmp_path / "genotype.json")) == result.genotype == random_genotype(
        BUILTIN_SPACES["s1"], 4, 3)


def test_cluster_options(tmp_path):
    s4 = BUILTIN_SPACES["s4"]
    clusters, source = resolve_clusters(SearchConfig(space="s4"), s4)
    assert clusters.groups == (("sep_conv_3x3",), ("noise",)) and source == "paper"  # cut down; noise alone
    assert resolve_clusters(SearchConfig(clusters="auto"), s4) == (None, "auto")
    nor = SearchSpace("nb", ("nor_conv_1x1", "skip_connect"), ("nor_conv_3x3",))
    with pytest.raises(ValueError, match="use --clusters auto"):
        resolve_clusters(SearchConfig(clusters="paper"), nor)
    path = tmp_path / "c.json"
    path.write_text(json.dumps({"groups": [["skip_connect", "sep_conv_3x3"]], "representatives": ["sep_conv_3x3"],
                                "correlation": {}}))
    mine, _ = resolve_clusters(SearchConfig(clusters=str(path)), BUILTIN_SPACES["s2"])
    assert mine.groups == (("skip_connect", "sep_conv_3x3"),) and mine.representatives == ("sep_conv_3x3",)
    path.write_text(json.dumps({"groups": "skip"}))
    with pytest.raises(ValueError, match="expected 'groups'"):
        resolve_clusters(SearchConfig(clusters=str(path)), BUILTIN_SPACES["s2"])


def test_auto_clusters_on_s1_search(tmp_path):
    cfg = SearchConfig(**TINY, space="s1", clusters="auto", cluster_layers=3, cluster_epochs=1, cluster_images=16,
                       device="cpu")
    result = run_search(cfg, str(tmp_path))
    report = json.loads((tmp_path / "clusters.json").read_text())
    assert report["source"] == "auto" and report["ops"] == BUILTIN_SPACES["s1"].ops()
    assert sorted(op for g in report["groups"] for op in g) == sorted(report["ops"])
    assert len(report["correlation"]["mean"]) == len(report["ops"]) and report["images"] == 16
    assert (tmp_path / "cluster" / "supernet.pt").is_file()
    assert len(result.genotype.normal) == 8


def test_bilevel_search_runs_on_a_split(tmp_path):
    result = run_search(SearchConfig(**TINY, method="darts", order="second", darts_epochs=1, device="cpu"),
                        str(tmp_path))
    record = json.loads((tmp_path / "metrics.jsonl").read_text().splitlines()[0])
    assert record["stage"] == "darts" and record["val_loss"] > 0
    assert result.summary["order"] == "second"


class _Interrupt(Exception):
    pass


def test_resume_gives_the_same_search(tmp_path, monkeypatch):
    # 96 images in batches of 16: 6 steps per epoch, 2 epochs per stage, a checkpoint every 2 steps
    cfg = dict(TINY, epochs=2, limit=96, batch_size=16, checkpoint_every=2, device="cpu", seed=5)
    full = run_search(SearchConfig(**cfg), str(tmp_path / "full"))

    from stacnas.search import training

    real_step = training._step

    def interrupt_at(n):
        calls = {"n": 0}

        def step(*args):
            calls["n"] += 1
            if calls["n"] == n:
                raise _Interrupt
            return real_step(*args)
        monkeypatch.setattr(training, "_step", step)

    interrupt_at(10)  # stage 1, epoch 2, step 4: the last checkpoint is after step 2
    with pytest.raises(_Interrupt):
        run_search(SearchConfig(**cfg), str(tmp_path / "cut"))
    state = torch.load(tmp_path / "cut" / "stage1" / "checkpoint.pt", weights_only=True)
    assert (state["epoch"], state["step"]) == (1, 2)
    interrupt_at(4 + 6 + 3)  # rest of stage 1, then stage 2 epoch 2 step 3
    with pytest.raises(_Interrupt):
        run_search(SearchConfig(**cfg), str(tmp_path / "cut"), resume=True)
    state = torch.load(tmp_path / "cut" / "stage2" / "checkpoint.pt", weights_only=True)
    assert (state["epoch"], state["step"]) == (1, 2)
    monkeypatch.setattr(training, "_step", real_step)
    resumed = run_search(SearchConfig(**cfg), str(tmp_path / "cut"), resume=True)
    assert resumed.genotype == full.genotype
    for t in ("normal", "reduce"):
        assert torch.equal(resumed.alphas[t], full.alphas[t])

    def lines(d):
        return [(r["stage"], r["epoch"], r["train_loss"])
                for r in map(json.loads, (tmp_path / d / "metrics.jsonl").read_text().splitlines())]
    assert lines("cut") == lines("full")


def test_resume_refuses_changed_options(tmp_path):
    run_search(SearchConfig(**TINY, device="cpu"), str(tmp_path))
    with pytest.raises(ValueError, match="options differ.*epochs"):
        run_search(SearchConfig(**{**TINY, "epochs": 3}, device="cpu"), str(tmp_path), resume=True)
    with pytest.raises(ValueError, match="no interrupted run to resume"):
        run_search(SearchConfig(**TINY, device="cpu"), str(tmp_path / "new"), resume=True)
