"""A whole search: StacNAS' clustering and two stages (cluster level, then operator level at the final depth), the
plain single-stage DARTS baseline, or a random cell; outputs written on rank 0 only.

A stage trains a fresh supernet (stacnas.search.training) and leaves <stage>/supernet.pt and <stage>/space.json; a
resumed search reloads finished stages and continues the interrupted one from its checkpoint.
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from .. import files, fused, genotypes, report
from ..data import datasets, get_loaders
from ..names import CELL_TYPES
from ..nn import Supernet
from ..ops import short_name
from ..runtime import checkpoint, distributed, precision, run_dir
from ..runtime.metrics import peak_memory
from ..spaces import PAPER_CLUSTERS, Clusters, SearchSpace, load_space
from . import clustering
from .config import RESUME_FREE, SearchConfig
from .stages import chosen_clusters, random_genotype, resolve_clusters, stage1_space, stage2_space
from .training import Run, SupernetTraining, train_supernet


def _supernet(run: Run, space: SearchSpace, layers: int) -> Supernet:
    """A fresh supernet (weights and α from the run's seed)."""
    cfg, info = run.cfg, run.loaders.info
    torch.manual_seed(cfg.seed)
    return Supernet(space, C=cfg.channels, layers=layers, nodes=cfg.nodes, num_classes=info.num_classes,
                    in_channels=info.in_channels, mode=cfg.memory_mode, kernels=cfg.kernels).to(run.device)


def _stage(run: Run, name: str, space: SearchSpace, layers: int, epochs: int, order: str):
    """A fresh supernet (new weights, new α) trained for one stage; reloaded when a resumed run finished it with
    this configuration (its stage.json says so)."""
    model = _supernet(run, space, layers)
    folder = run.out / name
    if run.resume and run_dir.finished(folder, run.config_hash):
        model.load_state_dict(checkpoint.read(folder / "supernet.pt", map_location=run.device))
        if run.ctx.is_main:
            print(f"[{name}] finished before the interruption; loaded {folder / 'supernet.pt'}", flush=True)
        return model
    distributed.broadcast_state(model, run.ctx)
    train_supernet(run, name, model, epochs, order)
    if run.ctx.is_main:
        files.save_torch(model.state_dict(), folder / "supernet.pt")
        files.write_text(folder / "space.json", json.dumps(space.to_dict(), indent=2) + "\n")
        run_dir.mark_finished(folder, run.config_hash, ["supernet.pt", "space.json"])
        checkpoint.remove(folder / "checkpoint.pt")
    return model


def _cluster_images(cfg: SearchConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """The fixed, seeded set of training images (no augmentation) whose op outputs are recorded, and their labels."""
    train, _, _ = datasets(cfg.dataset, cfg.data_root, augment=False, download=cfg.download)
    n = min(cfg.cluster_images, len(train), cfg.limit or len(train))
    order = torch.randperm(len(train), generator=torch.Generator().manual_seed(cfg.seed + 17))[:n]
    samples = [train[int(i)] for i in order]
    return torch.stack([x for x, _ in samples]), torch.tensor([int(y) for _, y in samples])


def auto_clusters(run: Run, space: SearchSpace) -> Clusters:
    """Warm up a supernet over all ops (one-level), record op outputs, cluster; writes clusters.json."""
    cfg = run.cfg
    path = run.out / "clusters.json"
    if run.resume and path.is_file():
        report = json.loads(path.read_text())
        if report.get("config_hash") == run.config_hash:
            return Clusters.from_dict(report, str(path))
    model = _stage(run, "cluster", space, cfg.cluster_layers, cfg.cluster_epochs, "one-level")
    images, labels = _cluster_images(cfg)
    clusters, report = clustering.build_clusters(model, images, cfg.batch_size, run.device, space.ops(),
                                                 cfg.cluster_threshold, cfg.cluster_count or None,
                                                 cfg.cluster_representative, cfg.cluster_statistic,
                                                 cfg.cluster_before_bn, labels, cfg.seed)
    if run.ctx.is_main:
        files.write_text(path, json.dumps({**report, "config_hash": run.config_hash}, indent=2) + "\n")
        print(clustering.render_report(report), flush=True)
    return clusters


def _stacnas(run: Run, space: SearchSpace, clusters: Clusters | None, source: str, summary: dict):
    cfg = run.cfg
    if clusters is None:
        clusters = auto_clusters(run, space)
    elif run.ctx.is_main:
        files.write_text(run.out / "clusters.json", json.dumps({**clusters.to_dict(), "source": source}, indent=2)
                         + "\n")
    summary["clusters"] = clusters.to_dict()
    stage1 = _stage(run, "stage1", stage1_space(space, clusters, cfg.nodes), cfg.stage1_layers, cfg.epochs, run.order)
    choice = chosen_clusters(stage1, clusters)
    if run.ctx.is_main:
        files.write_text(run.out / "stage1" / "choice.json", json.dumps(choice, indent=2) + "\n")
    summary["stage1_choice"] = {t: [clusters.groups[c] for c in picks] for t, picks in choice.items()}
    del stage1  # stage 2 never inherits stage-1 weights
    space2 = stage2_space(space, clusters, choice, cfg.nodes)
    return _stage(run, "stage2", space2, cfg.stage2_layers, cfg.epochs, run.order)


@dataclass
class SearchResult:
    genotype: genotypes.Genotype
    alphas: dict  # cell type -> softmax α of the final supernet (empty for --method random)
    summary: dict


def _checked_space(cfg: SearchConfig) -> SearchSpace:
    cfg.validate()
    space = load_space(cfg.space)
    space.check_cells(cfg.nodes)
    return space


def _start(cfg: SearchConfig, out_dir: str, force: bool, resume: bool, bilevel_split: bool) -> Run:
    """The run's device, process group and data, every one checked before the output folder is made or opened."""
    device = distributed.device_for(cfg.device)
    fused.resolve_backend(cfg.kernels, device)
    precision.check_amp(cfg.amp, device)
    if not resume:
        run_dir.check_out_dir(out_dir, force)
    ctx = distributed.setup(device)
    torch.manual_seed(cfg.seed)
    loaders = get_loaders(cfg.dataset, cfg.data_root, cfg.batch_size, cfg.val_fraction if bilevel_split else 0.0,
                          augment=True, workers=cfg.workers, seed=cfg.seed, download=cfg.download,
                          limit=cfg.limit or None, rank=ctx.rank, world=ctx.world)
    if ctx.is_main:
        run_dir.open_run_dir(out_dir, cfg, force, resume, RESUME_FREE, needs=())
    distributed.barrier(ctx)
    return Run(cfg, run_dir.config_hash(cfg, RESUME_FREE), loaders, device, ctx, Path(out_dir), resume,
               cfg.resolved_order())


def run_search(cfg: SearchConfig, out_dir: str, force: bool = False, resume: bool = False) -> SearchResult:
    """The whole search; writes genotype.json/.txt, clusters.json, metrics.jsonl, stage folders, summary.json.
    Every option, file and the data are checked before anything is written."""
    space = _checked_space(cfg)
    if cfg.method == "random":
        return _random_search(cfg, space, out_dir, force)
    clusters, source = resolve_clusters(cfg, space) if cfg.method == "stacnas" else (None, "")
    run = _start(cfg, out_dir, force, resume, bilevel_split=cfg.resolved_order() != "one-level")
    try:
        with run_dir.clean_on_early_failure(run.out, fresh=not resume and run.ctx.is_main):
            return _search(run, space, clusters, source)
    finally:
        distributed.teardown(run.ctx)


def _search(run: Run, space: SearchSpace, clusters, source: str) -> SearchResult:
    cfg = run.cfg
    summary = {"method": cfg.method, "order": run.order, "space": space.name, "dataset": run.loaders.info.name,
               "ranks": run.ctx.world}
    if cfg.method == "darts":
        model = _stage(run, "darts", space, cfg.darts_layers, cfg.darts_epochs, run.order)
    else:
        model = _stacnas(run, space, clusters, source, summary)
    genotype = model.genotype()
    alphas = {t: model.edge_weights(t).detach().cpu() for t in CELL_TYPES}
    summary.update(genotype=genotypes.to_dict(genotype), seconds=round(time.time() - run.started, 1),
                   **peak_memory())
    if run.ctx.is_main:
        _write_result(run.out, genotype, summary, cfg.report)
    return SearchResult(genotype, alphas, summary)


def _random_search(cfg: SearchConfig, space: SearchSpace, out_dir: str, force: bool) -> SearchResult:
    out = run_dir.open_run_dir(out_dir, cfg, force, resume=False, free=set(), needs=())
    genotype = random_genotype(space, cfg.nodes, cfg.seed)
    summary = {"method": "random", "space": space.name, "seed": cfg.seed, "genotype": genotypes.to_dict(genotype),
               "seconds": 0.0, **peak_memory()}
    _write_result(out, genotype, summary, cfg.report)
    return SearchResult(genotype, {}, summary)


def _write_result(out: Path, genotype, summary: dict, with_report: bool) -> None:
    genotypes.save(genotype, out / "genotype.json")
    genotypes.save(genotype, out / "genotype.txt")
    files.write_text(out / "summary.json", json.dumps(summary, indent=2) + "\n")
    print(render_summary(summary, out))
    if with_report:
        report.after_run(out)


def render_summary(summary: dict, out: Path) -> str:
    """The one-screen summary printed at the end of a search."""
    genotype = genotypes.from_dict(summary["genotype"])
    lines = ["", "=" * 30 + " stacnas search " + "=" * 30,
             f"method {summary['method']}" + (f" ({summary['order']})" if "order" in summary else "")
             + f" · space {summary['space']}" + (f" · dataset {summary['dataset']}" if "dataset" in summary else "")
             + (f" · {summary['ranks']} processes" if summary.get("ranks", 1) > 1 else "")]
    if "clusters" in summary:
        c = summary["clusters"]
        lines.append("clusters: " + "  ".join("{" + ", ".join(map(short_name, g)) + "}" for g in c["groups"]))
    for cell_type, picks in summary.get("stage1_choice", {}).items():
        lines.append(f"stage 1 {cell_type:>6}: " + " ".join("/".join(map(short_name, g)) for g in picks))
    for cell_type in CELL_TYPES:
        pairs = getattr(genotype, cell_type)
        lines.append(f"final {cell_type:>6}: " + "  ".join(
            f"{short_name(op)}({inp}→{2 + i // 2})" for i, (op, inp) in enumerate(pairs)))
    memory = f"peak memory {summary['peak_rss_mib']:.0f} MiB RSS"
    if "peak_cuda_mib" in summary:
        memory += f", {summary['peak_cuda_mib']:.0f} MiB CUDA"
    lines += [f"time {summary['seconds']:.1f} s · {memory}",
              f"genotype: {out / 'genotype.txt'} (DARTS text) and {out / 'genotype.json'}", "=" * 76]
    return "\n".join(lines)


def run_clustering(cfg: SearchConfig, out_dir: str, force: bool = False) -> Clusters:
    """`stacnas cluster`: the warm-up and automatic clustering alone; writes clusters.json."""
    space = _checked_space(cfg)
    run = _start(cfg, out_dir, force, resume=False, bilevel_split=False)
    try:
        clusters = auto_clusters(run, space)
        if run.ctx.is_main and cfg.report:
            report.after_run(run.out)
        return clusters
    finally:
        distributed.teardown(run.ctx)


def run_similarity_study(cfg: SearchConfig, out_dir: str, milestones: list[int], variants: list[tuple[str, bool]],
                         force: bool = False) -> list[dict]:
    """The measurement behind automatic clustering's defaults: one warm-up supernet over the space's ops (the
    `cluster` stage, one-level) trained for max(milestones) epochs; after each milestone epoch the ops' outputs are
    compared in each (statistic, before_bn) variant. One record per (epochs, variant): the clustering report
    (matrices, linkage, groups at the configured cut) and whether the groups are the published ones. The learning
    rate follows one cosine schedule over max(milestones) epochs (a shorter warm-up would have annealed it)."""
    space = _checked_space(cfg)
    run = _start(cfg, out_dir, force, resume=False, bilevel_split=False)
    (images, labels), records = _cluster_images(cfg), []
    paper = {frozenset(g) for g in PAPER_CLUSTERS.restricted_to(space.ops()).groups}

    class Measured(SupernetTraining):
        def end_epoch(self, epoch, total, started):
            logged = super().end_epoch(epoch, total, started)
            if epoch + 1 in milestones:
                for statistic, before_bn in variants:
                    clusters, report = clustering.build_clusters(
                        self.model, images, cfg.batch_size, run.device, space.ops(), cfg.cluster_threshold,
                        cfg.cluster_count or None, cfg.cluster_representative, statistic, before_bn, labels,
                        cfg.seed)
                    records.append({"epochs": epoch + 1, **report,
                                    "paper_groups": {frozenset(g) for g in clusters.groups} == paper})
            return logged

    try:
        Measured(run, "cluster", _supernet(run, space, cfg.cluster_layers), max(milestones), "one-level").run(False)
        return records
    finally:
        distributed.teardown(run.ctx)
