"""The collapse study: does a method's found cell fill with parameter-free ops as the space changes (RobustDARTS'
S1–S4, Zela et al. 2020), and does the Hessian eigenvalue announce it? One search-quality benchmark per space
(`stacnas bench search --preset collapse --space S --out OUT/S`), gathered here into one table (OUT/collapse.md and
collapse.json) and one figure (OUT/collapse.png: the eigenvalue over the search's epochs, per space and method).
"""
from __future__ import annotations

import json
from pathlib import Path

from .. import files
from ..errors import UsageError
from .search_quality import _cell

SPACES = ("darts", "s1", "s2", "s3", "s4")
# one colour per method, the same in every panel
_COLOURS = {"stacnas": "#1f77b4", "darts": "#d62728", "darts-first": "#ff7f0e", "darts-es": "#2ca02c",
            "random": "#7f7f7f"}
# DARTS-ES is DARTS first order until it stops (the same seed computes the same epochs): drawn dashed over it
_STYLES = {"darts-es": "--"}


def gather(out: Path) -> dict[str, dict]:
    """space -> its benchmark's results.json, for each space of SPACES whose benchmark in OUT/<space> finished."""
    found = {s: json.loads(files.read_text(out / s / "results.json", "benchmark results"))
             for s in SPACES if (out / s / "results.json").is_file()}
    if not found:
        raise UsageError(f"{out} holds no finished benchmark of any space ({', '.join(SPACES)}): run "
                         "benchmarks/collapse_study.py with --spaces first")
    return found


def table(results: dict[str, dict]) -> str:
    """One row per (space, method): trained cells' accuracy, parameter-free share, last eigenvalue, stability, search
    time, and where DARTS-ES stopped."""
    lines = ["| space | method | seeds | test top-1 % (mean ± std) | parameter-free share | Hessian λmax at the end | "
             "stability | search s | DARTS-ES kept epoch |", "|---|---|---|---|---|---|---|---|---|"]
    for space, result in results.items():
        for r in result["methods"]:
            kept = [str(k) if k is not None else "–" for k in r.get("early_stop_kept_epochs", [])]
            lines.append(f"| {space} | {r['method']} | {len(r['seeds'])} | {_cell(r['test_top1_mean'], '.2f')} ± "
                         f"{_cell(r['test_top1_std'], '.2f')} | {_cell(r['parameter_free_share'], '.2f')} | "
                         f"{_cell(r.get('hessian_last_mean'), '.3f')} | {_cell(r['stability'], '.2f')} | "
                         f"{_cell(r['search_seconds_mean'], '.0f')} | "
                         f"{', '.join(kept) if r['method'] == 'darts-es' else ''} |")
    return "\n".join(lines) + "\n"


def _epochs_run(trajectory: list[dict]) -> tuple[list[int], list[float], int | None]:
    """x (epochs counted through the stages: StacNAS' stage 2 continues after stage 1), λmax, and the epoch where a
    second stage begins (None for one stage)."""
    offsets, last, xs = {}, 0, []
    for e in trajectory:
        if e["stage"] not in offsets:
            offsets[e["stage"]] = last
        xs.append(offsets[e["stage"]] + e["epoch"])
        last = xs[-1]
    boundary = list(offsets.values())[1] if len(offsets) > 1 else None
    return xs, [e["value"] for e in trajectory], boundary


def figure(results: dict[str, dict]):
    """The eigenvalue over epochs: one panel per space, one line per (method, seed), a method's seeds in one colour;
    a dotted line where StacNAS' stage 2 begins (its stage 1's eigenvalue is over the cluster-level α)."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(3.2 * len(results), 3.0))
    axes = fig.subplots(1, len(results), squeeze=False)[0]
    for ax, (space, result) in zip(axes, results.items()):
        for r in result["methods"]:
            for i, trajectory in enumerate(r.get("hessian", [])):
                if not trajectory:
                    continue
                xs, ys, boundary = _epochs_run(trajectory)
                ax.plot(xs, ys, _STYLES.get(r["method"], "-"), color=_COLOURS.get(r["method"], "black"), lw=1.2,
                        alpha=0.8, label=r["method"] if i == 0 else None)
                if boundary is not None and i == 0:
                    ax.axvline(boundary + 0.5, color=_COLOURS.get(r["method"], "black"), ls=":", lw=1)
        ax.set_title(f"space {space}")
        ax.set_xlabel("search epoch")
        ax.set_yscale("log")
    axes[0].set_ylabel("Hessian λmax of α's loss")
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    return fig


def write(out: Path) -> str:
    """OUT/collapse.md, collapse.json and (with matplotlib) collapse.png from the finished spaces; returns the table."""
    from .. import report

    results = gather(out)
    text = table(results)
    files.write_text(out / "collapse.md", text)
    files.write_text(out / "collapse.json", json.dumps({s: r["methods"] for s, r in results.items()}, indent=2) + "\n")
    if report.plot_extra_missing() is None:
        from ..report.figures import figure_bytes

        files.write_bytes(out / "collapse.png", figure_bytes(figure(results), "png"))
    return text
