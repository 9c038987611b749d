"""Seeing a run: its figures (`stacnas plot`) and a self-contained HTML report (`stacnas report`), written at the
end of every search and training too. Drawing needs the plot extra (matplotlib; graphviz for DARTS-style cell
diagrams); without it searches and trainings run as before and say how to get their report."""
from __future__ import annotations

from pathlib import Path

from .. import genotypes
from ..errors import UsageError, warn
from ..files import make_folder, write_text
from .run_folder import RunFolder, load_run, load_runs

PLOT_EXTRA = "pip install 'stacnas[plot]' (in a checkout: pip install -e '.[plot]')"
__all__ = ["PLOT_EXTRA", "RunFolder", "after_run", "load_run", "load_runs", "plot", "plot_extra_missing",
           "plot_genotype", "write_comparison", "write_report"]


def plot_extra_missing() -> str | None:
    """None when figures can be drawn, else what is missing."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return "matplotlib is not installed"
    return None


def _require(what: str) -> None:
    missing = plot_extra_missing()
    if missing:
        raise UsageError(f"{what} needs the plot extra ({missing}): {PLOT_EXTRA}")


def _formats(formats) -> tuple[str, ...]:
    from .plots import FORMATS

    wrong = [f for f in formats if f not in FORMATS]
    if wrong or not formats:
        raise UsageError(f"--format {','.join(formats)}: use png, svg or png,svg")
    return tuple(dict.fromkeys(formats))


def plot(path: str | Path, formats=("png",)) -> list[Path]:
    """Every figure of a run folder (a pipeline's: of both runs) into <run>/plots; the files written."""
    _require("stacnas plot")
    from .plots import plot_run

    formats = _formats(formats)
    return [f for run in load_runs(path) for p in plot_run(run, formats) for f in p.files.values()]


def plot_genotype(spec: str, out: str | Path, formats=("png",)) -> list[Path]:
    """The normal and reduction cells of a genotype (name, file or text) into the folder `out`."""
    _require("stacnas plot")
    from .plots import plot_cells

    genotype = genotypes.load(spec)
    return [f for p in plot_cells(genotype, Path(out), _formats(formats)) for f in p.files.values()]


def write_report(path: str | Path) -> Path:
    """<path>/report.html for a search, cluster, training or pipeline folder (figures in <run>/plots too)."""
    _require("stacnas report")
    from .html import page, run_section
    from .plots import plot_run

    path = Path(path)
    runs = load_runs(path)
    body = "".join(run_section(run, plot_run(run)) for run in runs)
    title = "stacnas " + " + ".join(run.kind for run in runs) + f" · {path.resolve().name}"
    out = path / "report.html"
    write_text(out, page(title, body))
    return out


def write_comparison(paths: list[str | Path], out: str | Path, force: bool = False) -> Path:
    """Several runs side by side in one HTML file `out` (an existing file only with force)."""
    _require("stacnas report")
    from .html import comparison_body, page
    from .plots import plot_cells

    out = Path(out)
    if out.exists() and not force:
        raise UsageError(f"{out} exists: give another --out, or --force to replace it")
    groups = [(str(p), load_runs(p)) for p in paths]
    plots = {run.path: plot_cells(run.genotype, run.path / "plots", ("png",))
             for _, runs in groups for run in runs if run.genotype is not None}
    make_folder(out.parent)
    write_text(out, page(f"stacnas: {len(groups)} runs side by side", comparison_body(groups, plots)))
    return out


def after_run(path: str | Path) -> Path | None:
    """The report written at the end of a search or training; with no plot extra, a warning saying how to get one."""
    missing = plot_extra_missing()
    if missing:
        warn(f"no report.html ({missing}): {PLOT_EXTRA}, then 'stacnas report {path}'")
        return None
    out = write_report(path)
    print(f"report: {out}", flush=True)
    for run in load_runs(path):
        if run.config.get("tensorboard"):
            _figures_to_tensorboard(run)
    return out


def _figures_to_tensorboard(run: RunFolder) -> None:
    """The run's figures (its plots/*.png) as TensorBoard images, at the run's last epoch."""
    from matplotlib.image import imread

    from ..runtime import tensorboard

    writer = tensorboard.writer(run.path / "tensorboard")
    step = max((r["epoch"] for r in run.metrics), default=0)
    for png in sorted((run.path / "plots").glob("*.png")):
        writer.add_image(f"figures/{png.stem}", imread(png)[..., :3], step, dataformats="HWC")
    with tensorboard.writing(run.path / "tensorboard"):
        writer.flush()
