import json

import pytest
import torch

from stacnas import genotypes
from stacnas.genotypes import DARTS_V2, Genotype, derive_cell, parse_text

DARTS_V2_TEXT = ("Genotype(normal=[('sep_conv_3x3', 0), ('sep_conv_3x3', 1), ('sep_conv_3x3', 0), "
                 "('sep_conv_3x3', 1), ('sep_conv_3x3', 1), ('skip_connect', 0), ('skip_connect', 0), "
                 "('dil_conv_3x3', 2)], normal_concat=[2, 3, 4, 5], reduce=[('max_pool_3x3', 0), "
                 "('max_pool_3x3', 1), ('skip_connect', 2), ('max_pool_3x3', 1), ('max_pool_3x3', 0), "
                 "('skip_connect', 2), ('skip_connect', 2), ('max_pool_3x3', 1)], reduce_concat=[2, 3, 4, 5])")


def test_darts_v2_matches_published_cell():
    assert genotypes.to_text(DARTS_V2) == DARTS_V2_TEXT
    assert [op for op, _ in DARTS_V2.normal].count("sep_conv_3x3") == 5


@pytest.mark.parametrize("name", sorted(genotypes.KNOWN))
def test_round_trip_text_object_json_object(name, tmp_path):
    genotype = genotypes.KNOWN[name]
    parsed = parse_text(genotypes.to_text(genotype))
    assert parsed == genotype
    genotypes.save(parsed, tmp_path / "g.json")
    assert genotypes.load(str(tmp_path / "g.json")) == genotype
    genotypes.save(parsed, tmp_path / "g.txt")
    assert genotypes.load(str(tmp_path / "g.txt")) == genotype
    assert genotypes.from_dict(json.loads(json.dumps(genotypes.to_dict(genotype)))) == genotype


def test_range_concat_and_multiline_text():
    text = DARTS_V2_TEXT.replace("normal_concat=[2, 3, 4, 5]", "normal_concat=range(2, 6)").replace("), (", "),\n (")
    assert parse_text(text) == DARTS_V2
    assert parse_text("genotypes." + DARTS_V2_TEXT) == DARTS_V2


def test_never_evaluates(tmp_path):
    marker = tmp_path / "pwned"
    text = DARTS_V2_TEXT.replace("normal_concat=[2, 3, 4, 5]",
                                 f"normal_concat=__import__('pathlib').Path('{marker}').touch()")
    with pytest.raises(ValueError, match="column"):
        parse_text(text)
    assert not marker.exists()


@pytest.mark.parametrize("text, where, what", [
    ("Genotype(normal=[('sep_conv_3x3', 0)", "column 17", "never closed"),
    ("Genotype(normal=[('sep_conv_3x3', 0), 'x'], normal_concat=[2], reduce=[], reduce_concat=[2])", "column 39",
     "pair"),
    ("Genotype(normal=[('sep_conv_3x3', 0.5)], normal_concat=[2], reduce=[], reduce_concat=[2])", "column 18",
     "pair"),
    ("Genotype(normal=[], normal_concat=range(a), reduce=[], reduce_concat=[2])", "column 35", "integer"),
    ("Genotype(normal=[], normal_concat=[2], reduce=[])", "column 1", "missing reduce_concat"),
    ("Genotype(normal=[], normal_concat=[2], reduce=[], reduce_concat=[2], extra=[])", "column 76", "extra"),
    ("Foo(normal=[])", "column 1", "expected Genotype"),
])
def test_malformed_text_names_the_position(text, where, what):
    with pytest.raises(ValueError, match=f"{where}.*{what}"):
        parse_text(text)


def test_invalid_cells_are_refused():
    bad_input = DARTS_V2_TEXT.replace("('dil_conv_3x3', 2)", "('dil_conv_3x3', 5)")
    with pytest.raises(ValueError, match=r"normal\[7\] takes input 5, but node 3 can only take 0..4"):
        parse_text(bad_input)
    with pytest.raises(ValueError, match="not a usable op"):
        parse_text(DARTS_V2_TEXT.replace("('dil_conv_3x3', 2)", "('conv_9x9', 2)"))


def test_none_is_kept_and_named():
    genotype = parse_text(DARTS_V2_TEXT.replace("('dil_conv_3x3', 2)", "('none', 2)"))
    assert genotype.normal[7] == ("none", 2)
    assert genotypes.zero_edges(genotype) == ["normal[7]"]
    assert genotypes.zero_edges(genotypes.DARTS_V2) == []


def test_load_errors(tmp_path):
    with pytest.raises(ValueError, match="neither a known name"):
        genotypes.load("DARTS_V9")
    (tmp_path / "g.json").write_text("{")
    with pytest.raises(ValueError, match="not valid JSON"):
        genotypes.load(str(tmp_path / "g.json"))
    (tmp_path / "h.json").write_text('{"normal": []}')
    with pytest.raises(ValueError, match="lacks normal_concat"):
        genotypes.load(str(tmp_path / "h.json"))


OPS3 = ("none", "skip_connect", "sep_conv_3x3")


def test_derive_keeps_top_two_edges_by_best_non_none_weight():
    nodes = 2
    edge_ops = [OPS3] * 5
    w = torch.tensor([
        [0.90, 0.05, 0.05],  # node 0, input 0: `none` strongest, but strength counts non-none only: 0.05
        [0.10, 0.60, 0.30],  # node 0, input 1: skip 0.6
        [0.00, 0.20, 0.80],  # node 1, input 0: sep 0.8
        [0.00, 0.70, 0.30],  # node 1, input 1: skip 0.7
        [0.00, 0.75, 0.25],  # node 1, input 2: skip 0.75
    ])
    gene = derive_cell(w, edge_ops, nodes)
    assert gene == [("skip_connect", 1), ("skip_connect", 0), ("sep_conv_3x3", 0), ("skip_connect", 2)]


def test_derive_breaks_ties_like_darts():
    w = torch.full((2, 3), 1 / 3)
    assert derive_cell(w, [OPS3, OPS3], 1) == [("skip_connect", 0), ("skip_connect", 1)]


def test_derive_with_uneven_edges():
    edge_ops = [("none",), ("skip_connect",), ("sep_conv_3x3", "skip_connect")]
    with pytest.raises(ValueError, match="fewer than 2 incoming edges"):
        derive_cell(torch.tensor([[1.0, 0.0], [1.0, 0.0]]), edge_ops[:2], 1)
    w = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.4, 0.6]])
    genotype = derive_cell(w, [("skip_connect",), ("skip_connect",), ("sep_conv_3x3", "skip_connect")], 1)
    assert genotype == [("skip_connect", 0), ("skip_connect", 1)]


def test_genotype_is_darts_namedtuple():
    assert Genotype._fields == ("normal", "normal_concat", "reduce", "reduce_concat")
