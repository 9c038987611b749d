"""What each stage of a search searches: StacNAS' stage-1 and stage-2 spaces, stage 1's choice of a cluster per
edge, where the clusters come from, and the random baseline's cell."""
from __future__ import annotations

import json
import random
from pathlib import Path

from .. import genotypes
from ..errors import UsageError
from ..files import read_text
from ..names import CELL_TYPES
from ..spaces import PAPER_CLUSTERS, Clusters, SearchSpace
from .config import SearchConfig


def _per_edge(space: SearchSpace, nodes: int, make_ops) -> dict:
    return {t: tuple(make_ops(t, e, ops) for e, ops in enumerate(space.edge_ops(t, nodes))) for t in CELL_TYPES}


def stage1_space(space: SearchSpace, clusters: Clusters, nodes: int) -> SearchSpace:
    """Each edge holds `none` plus one representative per cluster present on the edge."""
    def ops(_, __, edge_ops):
        reps = []
        for group, rep in zip(clusters.groups, clusters.representatives):
            present = [op for op in group if op in edge_ops]
            if present:
                reps.append(rep if rep in present else present[0])
        return ("none", *reps)
    edges = _per_edge(space, nodes, ops)
    return SearchSpace(f"{space.name}-stage1", edges["normal"], edges["reduce"])


def chosen_clusters(supernet, clusters: Clusters) -> dict:
    """Stage 1's decision: per cell type and edge, the cluster of the argmax non-`none` op."""
    choice = {}
    for cell_type, edge_ops in supernet.edge_ops.items():
        weights = supernet.edge_weights(cell_type).detach().cpu().tolist()
        choice[cell_type] = [clusters.cluster_of(genotypes.strongest_op(row, ops)[1])
                             for row, ops in zip(weights, edge_ops)]
    return choice


def stage2_space(space: SearchSpace, clusters: Clusters, choice: dict, nodes: int) -> SearchSpace:
    """Each edge holds `none` plus the members of the cluster stage 1 chose for it (those on the edge)."""
    def ops(cell_type, e, edge_ops):
        return ("none", *(op for op in clusters.groups[choice[cell_type][e]] if op in edge_ops))
    edges = _per_edge(space, nodes, ops)
    return SearchSpace(f"{space.name}-stage2", edges["normal"], edges["reduce"])


def random_genotype(space: SearchSpace, nodes: int, seed: int) -> genotypes.Genotype:
    """A random cell of the space: per node two distinct inputs, each with a random non-`none` op of its edge."""
    space.check_cells(nodes)
    rng = random.Random(seed)
    cells = {}
    for cell_type in CELL_TYPES:
        edge_ops, pairs, offset = space.edge_ops(cell_type, nodes), [], 0
        for node in range(nodes):
            choices = [i for i in range(2 + node) if any(op != "none" for op in edge_ops[offset + i])]
            for i in sorted(rng.sample(choices, 2)):
                pairs.append((rng.choice([op for op in edge_ops[offset + i] if op != "none"]), i))
            offset += 2 + node
        cells[cell_type] = pairs
    concat = list(range(2, 2 + nodes))
    return genotypes.Genotype(cells["normal"], concat, cells["reduce"], concat)


def resolve_clusters(cfg: SearchConfig, space: SearchSpace) -> tuple[Clusters | None, str]:
    """(clusters named by --clusters, where they come from); (None, "auto") means: compute them by a warm-up run."""
    choice = cfg.clusters
    if choice is None and space.clusters is not None and space.clusters != PAPER_CLUSTERS:
        return space.clusters.restricted_to(space.ops()), "space file"
    if choice in (None, "paper"):
        return PAPER_CLUSTERS.restricted_to(space.ops()), "paper"
    if choice == "auto":
        return None, "auto"
    path = Path(choice)
    if not path.is_file():
        raise UsageError(f"--clusters {choice!r}: use paper, auto or the path of a clusters JSON file")
    try:
        data = json.loads(read_text(path, "clusters file"))
    except json.JSONDecodeError as err:
        raise UsageError(f"clusters file {path}: not valid JSON: {err}") from None
    return Clusters.from_dict(data, f"clusters file {path}").restricted_to(space.ops()), str(path)
