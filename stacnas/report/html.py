"""The HTML report: one self-contained file (images embedded as data URIs, styles inline, no script, nothing
fetched) for one run folder, or several runs side by side."""
from __future__ import annotations

import base64
import datetime
import html
import json

from .. import genotypes
from ..names import CELL_TYPES
from ..ops import short_name
from ..spaces import edge_endpoints, state_name
from .plots import Plot
from .run_folder import RunFolder

_STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1400px; color: #222; padding: 0 1em; }
h1 { font-size: 1.6em; } h2 { border-bottom: 1px solid #ccc; padding-bottom: .2em; margin-top: 1.6em; }
table { border-collapse: collapse; margin: .5em 0; } td, th { border: 1px solid #ddd; padding: .25em .6em; }
th { background: #f4f4f4; text-align: left; } td.num { text-align: right; font-variant-numeric: tabular-nums; }
img { max-width: 100%; border: 1px solid #eee; margin: .3em 0; } figure { margin: .6em 0; }
figcaption { color: #555; font-size: .9em; } pre { background: #f7f7f7; padding: .6em; white-space: pre-wrap; }
.cells { display: flex; flex-wrap: wrap; gap: 1em; align-items: flex-start; } .cells figure { flex: 1 1 600px; }
.note { color: #666; }
"""


def _e(value) -> str:
    return html.escape(str(value))


def _table(rows, header=None) -> str:
    """rows: sequences of cells; numbers are right-aligned."""
    def cell(v, tag="td"):
        numeric = isinstance(v, (int, float)) and not isinstance(v, bool)
        return f"<{tag}{' class=num' if numeric and tag == 'td' else ''}>{_e(_fmt(v))}</{tag}>"
    head = "<tr>" + "".join(cell(h, "th") for h in header) + "</tr>" if header else ""
    body = "".join("<tr>" + "".join(cell(v) for v in row) + "</tr>" for row in rows)
    return f"<table>{head}{body}</table>"


def _fmt(v) -> str:
    if v is None:
        return "–"
    if isinstance(v, float):
        return f"{v:.4g}" if abs(v) < 1e4 else f"{v:.0f}"
    if isinstance(v, (list, tuple)):
        return ", ".join(map(_fmt, v))
    return str(v)


def _image(plot: Plot) -> str:
    data = base64.b64encode(plot.files["png"].read_bytes()).decode("ascii")
    return (f'<figure><img alt="{_e(plot.title)}" src="data:image/png;base64,{data}">'
            f"<figcaption>{_e(plot.title)}</figcaption></figure>")


def _genotype_section(run: RunFolder, plots: dict) -> str:
    if run.genotype is None:
        return ""
    cells = "".join(_image(plots[f"cell_{t}"]) for t in CELL_TYPES if f"cell_{t}" in plots)
    engine = next((p.engine for name, p in plots.items() if name.startswith("cell_")), "")
    return (f"<h3>Cells</h3><div class=cells>{cells}</div><p class=note>drawn with {_e(engine)}</p>"
            f"<pre>{_e(genotypes.to_text(run.genotype))}</pre>")


def _clusters_section(run: RunFolder, plots: dict) -> str:
    clusters = run.clusters
    if not clusters:
        return ""
    rows = [("{" + ", ".join(map(short_name, g)) + "}", short_name(r))
            for g, r in zip(clusters["groups"], clusters["representatives"])]
    parts = [f"<h2>Operator clusters</h2><p>source: {_e(clusters.get('source', '?'))}"
             + (f" · cut {_e(json.dumps(clusters['cut']))}" if "cut" in clusters else "") + "</p>",
             _table(rows, ("cluster", "representative"))]
    if "clustering" in plots:
        parts.append(_image(plots["clustering"]))
    if run.stage1_choice:
        groups, types = clusters["groups"], list(run.stage1_choice)
        ends = edge_endpoints(len(run.stage1_choice[types[0]]))
        rows = [(f"{state_name(inp)} → {node}", *("/".join(map(short_name, groups[run.stage1_choice[t][e]]))
                                                 for t in types)) for e, (inp, node) in enumerate(ends)]
        parts += ["<h3>Stage 1: the cluster chosen on each edge</h3>", _table(rows, ("edge", *types))]
    return "".join(parts)


def _result_rows(run: RunFolder) -> list:
    if run.kind == "train" and run.result:
        r = run.result
        return [("test top-1 (%, last epoch)", r["test_top1"]), ("test top-5 (%)", r["test_top5"]),
                ("parameters (M)", r["params_m"]), ("multiply-adds (M)", r["macs_m"]), ("epochs", r["epochs"]),
                ("training time (s)", r["train_seconds"]), ("peak RSS (MiB)", r["peak_rss_mib"]),
                ("peak CUDA (MiB)", r.get("peak_cuda_mib")), ("processes", r["processes"])]
    if run.kind == "search" and run.summary:
        s = run.summary
        return [("method", s["method"] + (f" ({s['order']})" if "order" in s else "")), ("space", s["space"]),
                ("dataset", s.get("dataset")), ("search time (s)", s["seconds"]),
                ("peak RSS (MiB)", s["peak_rss_mib"]), ("peak CUDA (MiB)", s.get("peak_cuda_mib"))]
    return [("status", "not finished: what it has written so far")]


def _environment_section(run: RunFolder) -> str:
    env = run.environment or {}
    rows = [(k, v) for k, v in env.get("versions", {}).items()]
    rows += [(k, v) for k, v in env.get("device", {}).items()]
    rows += [(k, run.config[k]) for k in ("device", "memory_mode", "kernels", "amp") if k in run.config]
    backends = [(name, "yes" if b.get("available") else "no", b.get("reason", ""))
                for name, b in env.get("backends", {}).items()]
    return ("<h2>Environment and kernel backends</h2>" + _table(rows)
            + (_table(backends, ("backend", "available", "why")) if backends else ""))


def run_section(run: RunFolder, plots: list[Plot]) -> str:
    """Everything about one run: result, cells, wall time per stage, clusters and stage 1's choices, α, curves,
    configuration, environment."""
    by_name = {p.name: p for p in plots}
    alpha = "".join(_image(p) for p in plots if p.name.startswith("alpha_"))
    parts = [f"<h2>{_e(run.kind.capitalize())}: {_e(run.path)}</h2>", _table(_result_rows(run)),
             _genotype_section(run, by_name), "<h3>Wall time per stage</h3>",
             _table([(stage, seconds) for stage, seconds in run.stage_seconds().items()], ("stage", "seconds")),
             _clusters_section(run, by_name)]
    if alpha:
        parts.append(f"<h2>α trajectories</h2>{alpha}")
    if "curves" in by_name:
        parts.append("<h2>Curves</h2>" + _image(by_name["curves"]))
    parts += ["<h2>Configuration</h2>", _table(sorted(run.config.items()), ("option", "value")),
              _environment_section(run)]
    return "".join(parts)


def page(title: str, body: str) -> str:
    stamp = datetime.datetime.now().isoformat(timespec="seconds")
    return (f"<!DOCTYPE html><html lang=en><head><meta charset=utf-8><title>{_e(title)}</title>"
            f"<meta name=viewport content='width=device-width, initial-scale=1'><style>{_STYLE}</style></head>"
            f"<body><h1>{_e(title)}</h1><p class=note>written by stacnas on {_e(stamp)}</p>{body}</body></html>\n")


def comparison_rows(groups: list[tuple[str, list[RunFolder]]]) -> list:
    """One row per argument of `stacnas report A B ...` (a pipeline's search and training on one row)."""
    rows = []
    for name, runs in groups:
        search = next((r for r in runs if r.kind == "search" and r.summary), None)
        train = next((r for r in runs if r.kind == "train" and r.result), None)
        s, t = (search.summary if search else {}), (train.result if train else {})
        method = s.get("method") or (train.config.get("genotype") if train else None)
        rows.append((name, method, s.get("space"), s.get("dataset") or t.get("dataset"), s.get("seconds"),
                     s.get("peak_cuda_mib", s.get("peak_rss_mib")), t.get("test_top1"), t.get("params_m"),
                     t.get("train_seconds"), t.get("peak_cuda_mib", t.get("peak_rss_mib"))))
    return rows


COMPARISON_HEADER = ("run", "method / cell", "space", "dataset", "search s", "search peak MiB", "test top-1 %",
                     "params M", "train s", "train peak MiB")


def comparison_body(groups: list[tuple[str, list[RunFolder]]], plots: dict) -> str:
    """The table, then each run's cells side by side; `plots`: run path -> its plots."""
    parts = [_table(comparison_rows(groups), COMPARISON_HEADER),
             "<p class=note>peak memory: CUDA where the run used a GPU, else the process' resident memory</p>"]
    for name, runs in groups:
        with_cells = next((r for r in runs if r.genotype is not None), None)
        if with_cells is None:
            continue
        cells = [p for p in plots[with_cells.path] if p.name.startswith("cell_")]
        parts.append(f"<h2>{_e(name)}</h2><div class=cells>{''.join(map(_image, cells))}</div>")
    return "".join(parts)
