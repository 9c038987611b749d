"""Genotypes in DARTS' format: the namedtuple, JSON, the DARTS text form (parsed without eval), known cells,
and derivation of a cell from α.
"""
from __future__ import annotations

import ast
import json
from collections import namedtuple
from pathlib import Path

import torch

from .errors import UsageError
from .files import read_text, write_text
from .names import CELL_TYPES
from .ops import OPS

Genotype = namedtuple("Genotype", "normal normal_concat reduce reduce_concat")

_FIELDS = Genotype._fields


def validate(genotype: Genotype) -> Genotype:
    """Check ops are known, two inputs per node, and every input is an earlier state. `none` is allowed: some
    published cells keep it (see zero_edges)."""
    for cell_type in CELL_TYPES:
        pairs = getattr(genotype, cell_type)
        if not pairs or len(pairs) % 2:
            raise UsageError(f"genotype: '{cell_type}' needs two (op, input) pairs per node, got {len(pairs)}")
        for i, (op, inp) in enumerate(pairs):
            if op not in OPS:
                raise UsageError(f"genotype: {cell_type}[{i}] has operation {op!r}, which is not a usable op "
                                 f"({', '.join(OPS)})")
            if type(inp) is not int or not 0 <= inp < 2 + i // 2:
                raise UsageError(f"genotype: {cell_type}[{i}] takes input {inp!r}, but node {i // 2} can only "
                                 f"take 0..{1 + i // 2}")
        concat = getattr(genotype, cell_type + "_concat")
        nodes = len(pairs) // 2
        if not concat or any(type(c) is not int or not 0 <= c < 2 + nodes for c in concat):
            raise UsageError(f"genotype: '{cell_type}_concat' must list states in 0..{1 + nodes}, got {concat!r}")
    return genotype


def genotype_like(value) -> bool:
    """A genotype: stacnas' or another codebase's namedtuple with DARTS' four fields."""
    return all(hasattr(value, field) for field in _FIELDS)


def adopt(value) -> Genotype:
    """stacnas' Genotype of a genotype-like value (DARTS' own namedtuple, concat as a range), validated."""
    return _normalize(*(getattr(value, field) for field in _FIELDS))


def _normalize(normal, normal_concat, reduce, reduce_concat) -> Genotype:
    return validate(Genotype(
        normal=[(str(op), inp) for op, inp in normal],
        normal_concat=list(normal_concat),
        reduce=[(str(op), inp) for op, inp in reduce],
        reduce_concat=list(reduce_concat),
    ))


# ---- JSON ------------------------------------------------------------------------------------------------

def to_dict(genotype: Genotype) -> dict:
    return {
        "normal": [[op, inp] for op, inp in genotype.normal],
        "normal_concat": list(genotype.normal_concat),
        "reduce": [[op, inp] for op, inp in genotype.reduce],
        "reduce_concat": list(genotype.reduce_concat),
    }


def from_dict(data: dict) -> Genotype:
    if not isinstance(data, dict):
        raise UsageError(f"genotype JSON must be an object with {', '.join(_FIELDS)}, got {type(data).__name__}")
    missing = [f for f in _FIELDS if f not in data]
    if missing:
        raise UsageError(f"genotype JSON lacks {', '.join(missing)}")
    try:
        return _normalize(*(data[f] for f in _FIELDS))
    except (TypeError, ValueError) as err:
        raise UsageError(f"genotype JSON: {err}") from None


# ---- DARTS text form ---------------------------------------------------------------------------------------

def to_text(genotype: Genotype) -> str:
    """The DARTS repr, paste-able into DARTS' genotypes.py."""
    return repr(Genotype(normal=[tuple(p) for p in genotype.normal], normal_concat=list(genotype.normal_concat),
                         reduce=[tuple(p) for p in genotype.reduce], reduce_concat=list(genotype.reduce_concat)))


class _TextError(UsageError):
    def __init__(self, node, message):
        super().__init__(f"malformed genotype text at line {node.lineno}, column {node.col_offset + 1}: {message}")


def _parse_pairs(node):
    if not isinstance(node, (ast.List, ast.Tuple)):
        raise _TextError(node, "expected a list of (op, input) pairs")
    pairs = []
    for elt in node.elts:
        ok = isinstance(elt, (ast.Tuple, ast.List)) and len(elt.elts) == 2
        if ok:
            op, inp = elt.elts
            ok = (isinstance(op, ast.Constant) and isinstance(op.value, str)
                  and isinstance(inp, ast.Constant) and type(inp.value) is int)
        if not ok:
            raise _TextError(elt, "expected a pair ('op_name', input_index)")
        pairs.append((op.value, inp.value))
    return pairs


def _parse_concat(node, states: int):
    """The concat list; `states` bounds a range before it is expanded (range(2, 10**18) must not fill memory)."""
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "range":
        args = node.args
        if node.keywords or not 1 <= len(args) <= 2 or not all(
                isinstance(a, ast.Constant) and type(a.value) is int for a in args):
            raise _TextError(node, "range() takes one or two integer literals here")
        bounds = range(*(a.value for a in args))
        if bounds and not 0 <= bounds.start <= bounds.stop - 1 < states:
            raise _TextError(node, f"range() must stay within the cell's states 0..{states - 1}")
        return list(bounds)
    if isinstance(node, (ast.List, ast.Tuple)):
        if not all(isinstance(e, ast.Constant) and type(e.value) is int for e in node.elts):
            raise _TextError(node, "expected a list of integers")
        return [e.value for e in node.elts]
    raise _TextError(node, "expected a list of integers or range(a, b)")


def parse_text(text: str) -> Genotype:
    """Parse `Genotype(normal=[...], normal_concat=range(2, 6), ...)` — with the syntax tree, never eval."""
    text = text.strip()
    try:
        tree = ast.parse(text, mode="eval")
    except SyntaxError as err:
        raise UsageError(f"malformed genotype text at line {err.lineno}, column {err.offset}: {err.msg}") from None
    call = tree.body
    if not (isinstance(call, ast.Call) and isinstance(call.func, (ast.Name, ast.Attribute))
            and (getattr(call.func, "id", None) or call.func.attr) == "Genotype"):
        raise _TextError(call, "expected Genotype(normal=..., normal_concat=..., reduce=..., reduce_concat=...)")
    if len(call.args) > len(_FIELDS):
        raise _TextError(call, f"Genotype takes at most {len(_FIELDS)} arguments")
    values = dict(zip(_FIELDS, call.args))
    for kw in call.keywords:
        if kw.arg not in _FIELDS or kw.arg in values:
            raise _TextError(kw.value, f"unexpected or repeated argument {kw.arg!r}")
        values[kw.arg] = kw.value
    missing = [f for f in _FIELDS if f not in values]
    if missing:
        raise _TextError(call, f"missing {', '.join(missing)}")
    parsed = {f: _parse_pairs(values[f]) for f in ("normal", "reduce")}
    for cell_type in CELL_TYPES:
        parsed[f"{cell_type}_concat"] = _parse_concat(values[f"{cell_type}_concat"], 2 + len(parsed[cell_type]) // 2)
    return _normalize(**parsed)


# ---- Known cells -------------------------------------------------------------------------------------------

DARTS_V1 = parse_text(
    "Genotype(normal=[('sep_conv_3x3', 1), ('sep_conv_3x3', 0), ('skip_connect', 0), ('sep_conv_3x3', 1), "
    "('skip_connect', 0), ('sep_conv_3x3', 1), ('sep_conv_3x3', 0), ('skip_connect', 2)], "
    "normal_concat=[2, 3, 4, 5], reduce=[('max_pool_3x3', 0), ('max_pool_3x3', 1), ('skip_connect', 2), "
    "('max_pool_3x3', 0), ('max_pool_3x3', 0), ('skip_connect', 2), ('skip_connect', 2), ('avg_pool_3x3', 0)], "
    "reduce_concat=[2, 3, 4, 5])")
DARTS_V2 = parse_text(
    "Genotype(normal=[('sep_conv_3x3', 0), ('sep_conv_3x3', 1), ('sep_conv_3x3', 0), ('sep_conv_3x3', 1), "
    "('sep_conv_3x3', 1), ('skip_connect', 0), ('skip_connect', 0), ('dil_conv_3x3', 2)], "
    "normal_concat=[2, 3, 4, 5], reduce=[('max_pool_3x3', 0), ('max_pool_3x3', 1), ('skip_connect', 2), "
    "('max_pool_3x3', 1), ('max_pool_3x3', 0), ('skip_connect', 2), ('skip_connect', 2), ('max_pool_3x3', 1)], "
    "reduce_concat=[2, 3, 4, 5])")
PDARTS = parse_text(
    "Genotype(normal=[('skip_connect', 0), ('dil_conv_3x3', 1), ('skip_connect', 0), ('sep_conv_3x3', 1), "
    "('sep_conv_3x3', 1), ('sep_conv_3x3', 3), ('sep_conv_3x3', 0), ('dil_conv_5x5', 4)], "
    "normal_concat=range(2, 6), reduce=[('avg_pool_3x3', 0), ('sep_conv_5x5', 1), ('sep_conv_3x3', 0), "
    "('dil_conv_5x5', 2), ('max_pool_3x3', 0), ('dil_conv_3x3', 1), ('dil_conv_3x3', 1), ('dil_conv_5x5', 3)], "
    "reduce_concat=range(2, 6))")
PC_DARTS = parse_text(
    "Genotype(normal=[('sep_conv_3x3', 1), ('skip_connect', 0), ('sep_conv_3x3', 0), ('dil_conv_3x3', 1), "
    "('sep_conv_5x5', 0), ('sep_conv_3x3', 1), ('avg_pool_3x3', 0), ('dil_conv_3x3', 1)], "
    "normal_concat=range(2, 6), reduce=[('sep_conv_5x5', 1), ('max_pool_3x3', 0), ('sep_conv_5x5', 1), "
    "('sep_conv_5x5', 2), ('sep_conv_3x3', 0), ('sep_conv_3x3', 3), ('sep_conv_3x3', 1), ('sep_conv_3x3', 2)], "
    "reduce_concat=range(2, 6))")

# StacNAS' published cells (the figures of its reference implementation's README; ../shared/reference)
STACNAS_C10 = parse_text(
    "Genotype(normal=[('sep_conv_3x3', 1), ('skip_connect', 0), ('sep_conv_3x3', 2), ('skip_connect', 0), "
    "('sep_conv_3x3', 1), ('sep_conv_3x3', 0), ('sep_conv_3x3', 2), ('sep_conv_3x3', 0)], "
    "normal_concat=[2, 3, 4, 5], reduce=[('skip_connect', 1), ('max_pool_3x3', 0), ('dil_conv_5x5', 2), "
    "('avg_pool_3x3', 0), ('dil_conv_5x5', 3), ('avg_pool_3x3', 0), ('dil_conv_5x5', 3), ('sep_conv_5x5', 0)], "
    "reduce_concat=[2, 3, 4, 5])")
STACNAS_C100 = parse_text(
    "Genotype(normal=[('skip_connect', 0), ('dil_conv_3x3', 1), ('sep_conv_3x3', 0), ('sep_conv_3x3', 1), "
    "('sep_conv_3x3', 0), ('sep_conv_3x3', 1), ('sep_conv_3x3', 0), ('sep_conv_3x3', 1)], "
    "normal_concat=[2, 3, 4, 5], reduce=[('avg_pool_3x3', 0), ('sep_conv_3x3', 1), ('avg_pool_3x3', 0), "
    "('dil_conv_5x5', 2), ('dil_conv_5x5', 2), ('sep_conv_5x5', 1), ('sep_conv_3x3', 0), ('dil_conv_5x5', 3)], "
    "reduce_concat=[2, 3, 4, 5])")
STACNAS_IMAGENET = parse_text(
    "Genotype(normal=[('skip_connect', 0), ('skip_connect', 1), ('sep_conv_3x3', 0), ('sep_conv_3x3', 1), "
    "('sep_conv_3x3', 0), ('sep_conv_3x3', 1), ('sep_conv_3x3', 0), ('sep_conv_3x3', 1)], "
    "normal_concat=[2, 3, 4, 5], reduce=[('sep_conv_3x3', 0), ('sep_conv_3x3', 1), ('sep_conv_3x3', 0), "
    "('sep_conv_3x3', 1), ('sep_conv_3x3', 0), ('sep_conv_3x3', 1), ('sep_conv_3x3', 0), ('sep_conv_3x3', 1)], "
    "reduce_concat=[2, 3, 4, 5])")

KNOWN = {"DARTS_V1": DARTS_V1, "DARTS_V2": DARTS_V2, "DARTS": DARTS_V2, "PDARTS": PDARTS, "PC_DARTS": PC_DARTS,
         "STACNAS_C10": STACNAS_C10, "STACNAS_C100": STACNAS_C100, "STACNAS_IMAGENET": STACNAS_IMAGENET}


def zero_edges(genotype: Genotype) -> list[str]:
    """The pairs that keep `none` ("normal[3]", ...): a final network builds them as DARTS' model.py does, a zero op
    that adds nothing to its node."""
    return [f"{cell_type}[{i}]" for cell_type in CELL_TYPES
            for i, (op, _) in enumerate(getattr(genotype, cell_type)) if op == "none"]


def save(genotype: Genotype, path: str | Path) -> None:
    """Writes JSON for a .json path, else the DARTS text form."""
    path = Path(path)
    text = json.dumps(to_dict(genotype), indent=2) if path.suffix == ".json" else to_text(genotype)
    write_text(path, text + "\n")


def load(spec: str) -> Genotype:
    """A known name (DARTS_V2, ...), a .json file, a file holding DARTS text, or the DARTS text itself."""
    if spec in KNOWN:
        return KNOWN[spec]
    if spec.lstrip().startswith("Genotype"):
        return parse_text(spec)
    path = Path(spec)
    if not path.is_file():
        raise UsageError(f"genotype {spec!r} is neither a known name ({', '.join(KNOWN)}), a file, "
                         "nor DARTS text 'Genotype(normal=[...], ...)'")
    text = read_text(path, "genotype file")
    if path.suffix == ".json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as err:
            raise UsageError(f"genotype file {path}: not valid JSON ({err})") from None
        return from_dict(data)
    return parse_text(text)


# ---- Derivation from α -------------------------------------------------------------------------------------

def strongest_op(row, ops) -> tuple[float, str] | None:
    """(weight, op) of the largest non-`none` weight in one edge's row (ties: the earlier op), or None."""
    cands = [(row[k], -k, op) for k, op in enumerate(ops) if op != "none"]
    if not cands:
        return None
    w, _, op = max(cands)
    return w, op


def derive_cell(weights: torch.Tensor, edge_ops: list[tuple[str, ...]], nodes: int) -> list[tuple[str, int]]:
    """DARTS' rule on softmax weights: each node keeps its 2 strongest incoming edges, strength = the largest
    non-`none` weight of the edge; each kept edge keeps its argmax non-`none` op. Ties go to the earlier edge
    and the earlier op (as DARTS' stable sort does).

    weights: (edges, max_ops) softmax weights, entry k of edge e belonging to edge_ops[e][k].
    """
    weights = weights.detach().cpu().tolist()
    gene, start = [], 0
    for node in range(nodes):
        best = []  # (strength, input, op) per incoming edge
        for inp in range(2 + node):
            found = strongest_op(weights[start + inp], edge_ops[start + inp])
            if found is not None:
                best.append((found[0], inp, found[1]))
        if len(best) < 2:
            raise UsageError(f"node {node} has fewer than 2 incoming edges with an op other than 'none'")
        best.sort(key=lambda b: -b[0])
        gene.extend((op, inp) for _, inp, op in best[:2])
        start += 2 + node
    return gene


def derive(weights_normal, weights_reduce, edge_ops_normal, edge_ops_reduce, nodes: int = 4) -> Genotype:
    concat = list(range(2, 2 + nodes))
    return Genotype(normal=derive_cell(weights_normal, edge_ops_normal, nodes), normal_concat=concat,
                    reduce=derive_cell(weights_reduce, edge_ops_reduce, nodes), reduce_concat=concat)
