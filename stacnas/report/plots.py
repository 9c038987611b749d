"""`stacnas plot`: every figure of a run folder (or of a genotype) written as PNG and/or SVG files."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .. import genotypes
from ..files import make_folder, write_bytes
from ..names import CELL_TYPES
from .cell_graph import cell_graph, draw_cell
from .figures import alpha_figure, clustering_figure, curves_figure, figure_bytes
from .run_folder import RunFolder

FORMATS = ("png", "svg")


@dataclass(frozen=True)
class Plot:
    name: str  # file name without the extension: cell_normal, alpha_stage1_reduce, clustering, curves
    title: str
    files: dict  # format -> Path
    engine: str = "matplotlib"


def _save(fig, folder: Path, name: str, formats) -> dict:
    paths = {fmt: folder / f"{name}.{fmt}" for fmt in formats}
    for fmt, path in paths.items():
        write_bytes(path, figure_bytes(fig, fmt))
    return paths


def plot_cells(genotype: genotypes.Genotype, folder: Path, formats) -> list[Plot]:
    make_folder(folder)
    plots = []
    for cell_type in CELL_TYPES:
        graph, paths = cell_graph(genotype, cell_type), {}
        for fmt in formats:
            paths[fmt] = folder / f"cell_{cell_type}.{fmt}"
            engine = draw_cell(graph, paths[fmt], fmt)
        plots.append(Plot(f"cell_{cell_type}", f"{cell_type} cell", paths, engine))
    return plots


def plot_run(run: RunFolder, formats=("png",), folder: Path | None = None) -> list[Plot]:
    """Cells (when the run has a genotype), α trajectories of every search stage, the clustering (when computed)
    and the curves; into <run>/plots unless `folder` is given."""
    folder = folder or run.path / "plots"
    make_folder(folder)
    plots = plot_cells(run.genotype, folder, formats) if run.genotype is not None else []
    if run.clusters and run.clusters.get("correlation"):
        plots.append(Plot("clustering", "operator clustering",
                          _save(clustering_figure(run.clusters), folder, "clustering", formats)))
    for stage in run.stages():
        if stage is None or not run.records(stage):
            continue
        for cell_type in CELL_TYPES:
            name = f"alpha_{stage}_{cell_type}"
            plots.append(Plot(name, f"α · {stage} · {cell_type} cell",
                              _save(alpha_figure(run, stage, cell_type), folder, name, formats)))
    if run.metrics:
        plots.append(Plot("curves", "curves per epoch", _save(curves_figure(run), folder, "curves", formats)))
    return plots
