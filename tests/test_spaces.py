import json

import pytest

from stacnas.ops import PRIMITIVES
from stacnas.spaces import BUILTIN_SPACES, PAPER_CLUSTERS, load_space, num_edges

MAX, AVG, SKIP = "max_pool_3x3", "avg_pool_3x3", "skip_connect"
SEP3, DIL3, DIL5 = "sep_conv_3x3", "dil_conv_3x3", "dil_conv_5x5"


def test_num_edges():
    assert [num_edges(n) for n in (1, 2, 3, 4, 5)] == [2, 5, 9, 14, 20]


def test_darts_space_is_all_primitives_everywhere():
    space = BUILTIN_SPACES["darts"]
    for cell_type in ("normal", "reduce"):
        assert space.edge_ops(cell_type) == [PRIMITIVES] * 14
    assert space.clusters == PAPER_CLUSTERS


@pytest.mark.parametrize("name, ops", [("s2", (SKIP, SEP3)), ("s3", ("none", SKIP, SEP3)),
                                       ("s4", ("noise", SEP3))])
def test_uniform_robustdarts_spaces(name, ops):
    for cell_type in ("normal", "reduce"):
        assert BUILTIN_SPACES[name].edge_ops(cell_type) == [ops] * 14


def test_s1_per_edge_pairs_in_darts_edge_order():
    space = BUILTIN_SPACES["s1"]
    assert space.edge_ops("normal") == [
        (SKIP, DIL3), (SKIP, DIL5),
        (SKIP, DIL5), (SKIP, SEP3), (SKIP, DIL3),
        (MAX, SKIP), (SKIP, SEP3), (SKIP, SEP3), (SKIP, DIL3),
        (SKIP, SEP3), (MAX, SKIP), (SKIP, DIL3), (DIL3, DIL5), (DIL3, DIL5)]
    assert space.edge_ops("reduce") == [
        (MAX, AVG), (MAX, DIL3),
        (MAX, AVG), (MAX, AVG), (SKIP, DIL5),
        (MAX, AVG), (MAX, SEP3), (SKIP, DIL3), (SKIP, DIL5),
        (MAX, AVG), (MAX, AVG), (SKIP, DIL5), (SKIP, DIL5), (SKIP, DIL5)]
    with pytest.raises(ValueError, match="lists 14 normal edges, but a cell with 3 nodes has 9"):
        space.edge_ops("normal", nodes=3)


def test_paper_clusters():
    assert PAPER_CLUSTERS.groups == ((MAX, AVG), (SKIP,), (SEP3, "sep_conv_5x5"), (DIL3, DIL5))
    assert PAPER_CLUSTERS.representatives == (MAX, SKIP, SEP3, DIL3)
    assert PAPER_CLUSTERS.cluster_of(DIL5) == 3


def test_user_space_yaml_with_uneven_edges(tmp_path):
    path = tmp_path / "mine.yaml"
    path.write_text("normal: [none, skip_connect, sep_conv_3x3]\n"
                    "reduce:\n" + "".join(f"  - [max_pool_3x3{', skip_connect' * (i % 2)}]\n" for i in range(5))
                    + "clusters: [[skip_connect], [sep_conv_3x3, max_pool_3x3]]\n")
    space = load_space(str(path))
    assert space.name == "mine"
    assert space.edge_ops("normal", nodes=2) == [("none", SKIP, SEP3)] * 5
    assert [len(e) for e in space.edge_ops("reduce", nodes=2)] == [1, 2, 1, 2, 1]
    assert space.clusters.representatives == (SKIP, SEP3)


def test_user_space_json_round_trip(tmp_path):
    path = tmp_path / "s1copy.json"
    path.write_text(json.dumps(BUILTIN_SPACES["s1"].to_dict()))
    assert load_space(str(path)).edge_ops("reduce") == BUILTIN_SPACES["s1"].edge_ops("reduce")


@pytest.mark.parametrize("text, message", [
    ("normal: [skip_connect, conv_9x9]\nreduce: [skip_connect]\n", "unknown operation 'conv_9x9'"),
    ("normal: [skip_connect, skip_connect]\nreduce: [skip_connect]\n", "listed twice"),
    ("normal: [skip_connect]\n", "'reduce' must be a list"),
    ("normal: [skip_connect]\nreduce: [skip_connect]\nextra: 1\n", "unknown keys"),
    ("normal: [skip_connect, [max_pool_3x3]]\nreduce: [skip_connect]\n", "mixes op names and op lists"),
    ("normal: [a\n", "not valid YAML"),
    ("normal: [skip_connect]\nreduce: [skip_connect]\nclusters: [[sep_conv_3x3]]\n", "not in the space"),
])
def test_bad_space_files_are_named(tmp_path, text, message):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ValueError, match=message):
        load_space(str(path))


def test_unknown_space_name():
    with pytest.raises(ValueError, match="unknown search space 'darts2'"):
        load_space("darts2")
