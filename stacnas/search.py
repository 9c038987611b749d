"""Architecture search: StacNAS' clustering and two stages (cluster level, then operator level at the final depth),
the plain single-stage DARTS baseline and a random-architecture sanity baseline, in one engine.

Optimization orders (stacnas.steps): one-level (StacNAS' default: weights and α stepped on one loss, all training
data) and DARTS' bi-level first and second order (50/50 train/validation split). Runs data-parallel under
torchrun (stacnas.distributed), resumes exactly from its last checkpoint, and writes its outputs only on rank 0.
"""
from __future__ import annotations

import json
import random
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from . import checkpoint, distributed, genotypes, steps
from .config import open_run_dir, option
from .data import datasets, get_loaders
from .info import peak_memory
from .ops import short_name
from .progress import Progress
from .spaces import PAPER_CLUSTERS, Clusters, SearchSpace, load_space

ORDERS = ("auto", "one-level", "first", "second")


@dataclass
class SearchConfig:
    method: str = option("stacnas", "stacnas: clusters, then stage 1 (clusters) and stage 2 (ops); darts: one stage "
                                  "over all ops (the baseline); random: a random cell of the space",
                       choices=["stacnas", "darts", "random"])
    space: str = option("darts", "search space: darts, s1, s2, s3, s4 or a YAML/JSON space file")
    clusters: str | None = option(None, "operator clusters: paper (published, DARTS ops), auto (computed), or a JSON "
                                      "file such as a previous clusters.json (default: the space file's own "
                                      "clusters, else paper)", type=str)
    order: str = option("auto", "optimization: one-level, first or second (DARTS bi-level); auto: one-level for "
                              "stacnas, second for darts", choices=list(ORDERS))
    dataset: str = option("digits", "dataset (digits is built in and offline)")
    data_root: str | None = option(None, "folder holding the dataset files", type=str)
    download: bool = option(False, "download the dataset if missing (where a network exists)")
    limit: int = option(0, "use at most this many training images (0: all)")
    val_fraction: float = option(0.5, "share of the training images held out as validation data in bi-level search")
    seed: int = option(0, "random seed of weights, α, clustering images and data order")
    batch_size: int = option(64, "mini-batch size (per process under torchrun)")
    workers: int = option(0, "data-loading worker processes")
    channels: int = option(16, "initial channels C of the supernet")
    nodes: int = option(4, "intermediate nodes per cell")
    stage1_layers: int = option(14, "cells in the stage-1 (cluster-level) supernet")
    stage2_layers: int = option(20, "cells in the stage-2 supernet (the final depth: complexity match)")
    darts_layers: int = option(8, "cells in the DARTS baseline supernet")
    epochs: int = option(80, "epochs of each StacNAS stage")
    darts_epochs: int = option(50, "epochs of the DARTS baseline")
    cluster_layers: int = option(8, "cells of the warm-up supernet of automatic clustering")
    cluster_epochs: int = option(10, "warm-up epochs before the op outputs are recorded (automatic clustering)")
    cluster_images: int = option(10000, "training images whose op outputs are recorded (automatic clustering)")
    cluster_threshold: float = option(0.5, "cut the dendrogram at this distance 1 - |corr|")
    cluster_count: int = option(0, "cut into this many clusters instead of at the threshold (0: use the threshold)")
    cluster_representative: str = option("alpha", "representative of a cluster: alpha (highest mean softmax weight "
                                                "after warm-up) or first (first listed)", choices=["alpha", "first"])
    w_lr: float = option(0.025, "SGD learning rate of the weights (cosine schedule)")
    w_lr_min: float = option(0.001, "final learning rate of the cosine schedule")
    w_momentum: float = option(0.9, "SGD momentum")
    w_weight_decay: float = option(3e-4, "weight decay of the weights")
    grad_clip: float = option(3.0, "clip the weights' gradient norm at this value")
    a_lr: float = option(3e-4, "Adam learning rate of α")
    a_betas: tuple = option((0.5, 0.999), "Adam betas of α")
    a_weight_decay: float = option(1e-3, "weight decay of α")
    checkpoint_every: int = option(0, "also checkpoint every this many steps (0: at the end of every epoch only)")
    device: str = option("auto", "cpu, cuda or auto")
    memory_mode: str = option("lean", "supernet memory mode: lean (fused, exact, about half the memory), recompute "
                                    "(least memory, recomputes in backward) or reference (plain PyTorch)",
                            choices=["lean", "recompute", "reference"])
    kernels: str = option("auto", "kernel backend of the fused sum: auto, reference, cpp, cuda or triton",
                        choices=["auto", "reference", "cpp", "cuda", "triton"])

    def validate(self):
        if self.method not in ("stacnas", "darts", "random"):
            raise ValueError(f"method must be stacnas, darts or random, got {self.method!r}")
        if self.order not in ORDERS:
            raise ValueError(f"order must be one of {', '.join(ORDERS)}, got {self.order!r}")
        for name in ("batch_size", "channels", "nodes", "epochs", "darts_epochs", "cluster_images"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name.replace('_', '-')} must be at least 1, got {getattr(self, name)}")
        for name in ("stage1_layers", "stage2_layers", "darts_layers", "cluster_layers"):
            if getattr(self, name) < 3:
                raise ValueError(f"{name.replace('_', '-')} must be at least 3 (two reduction cells and a normal)")
        if self.resolved_order() != "one-level" and not 0.0 < self.val_fraction < 1.0:
            raise ValueError(f"val-fraction must be between 0 and 1 for bi-level search, got {self.val_fraction}")

    def resolved_order(self) -> str:
        if self.order != "auto":
            return self.order
        return "second" if self.method == "darts" else "one-level"


# ---- the two StacNAS stages' spaces ----------------------------------------------------------------------

def _per_edge(space: SearchSpace, nodes: int, make_ops) -> dict:
    return {t: tuple(make_ops(t, e, ops) for e, ops in enumerate(space.edge_ops(t, nodes)))
            for t in ("normal", "reduce")}


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
    rng = random.Random(seed)
    cells = {}
    for cell_type in ("normal", "reduce"):
        edge_ops, pairs, offset = space.edge_ops(cell_type, nodes), [], 0
        for node in range(nodes):
            choices = [i for i in range(2 + node) if any(op != "none" for op in edge_ops[offset + i])]
            if len(choices) < 2:
                raise ValueError(f"{cell_type} node {node} has fewer than two edges with an operation other than none")
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
        raise ValueError(f"--clusters {choice!r}: use paper, auto or the path of a clusters JSON file")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"clusters file {path}: not valid JSON: {err}") from None
    return Clusters.from_dict(data, f"clusters file {path}").restricted_to(space.ops()), str(path)


# ---- training one supernet, resumable -----------------------------------------------------------------------

@dataclass
class Run:
    """What every stage shares: the configuration, data, device, process group and output folder."""
    cfg: SearchConfig
    loaders: object
    device: torch.device
    ctx: distributed.Context
    out: Path
    resume: bool
    order: str
    started: float = field(default_factory=time.time)

    def log(self, record: dict) -> None:
        if not self.ctx.is_main:
            return
        with (self.out / "metrics.jsonl").open("a") as f:
            f.write(json.dumps(record) + "\n")
        extra = f" val loss {record['val_loss']:.4f}" if "val_loss" in record else ""
        print(f"[{record['stage']}] epoch {record['epoch']}/{record['epochs']}: loss {record['train_loss']:.4f} "
              f"acc {record['train_acc']:.3f}{extra} lr {record['lr']:.4g} ({record['seconds']:.1f}s)", flush=True)


def _optimizers(model, cfg: SearchConfig, epochs: int):
    w_opt = torch.optim.SGD(model.weights(), cfg.w_lr, momentum=cfg.w_momentum, weight_decay=cfg.w_weight_decay)
    a_opt = torch.optim.Adam(model.alphas(), cfg.a_lr, betas=tuple(cfg.a_betas), weight_decay=cfg.a_weight_decay)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(w_opt, epochs, eta_min=cfg.w_lr_min)
    return w_opt, a_opt, schedule


def _batches(run: Run, order: str):
    if order == "one-level":
        return ((batch, None) for batch in run.loaders.train)
    return zip(run.loaders.train, run.loaders.val)


def _step(run: Run, order: str, model, opts, x, y, xv, yv, lr):
    """One search step in the configured order; returns (training loss, training logits, validation loss)."""
    w_opt, a_opt, _ = opts
    cfg, ctx = run.cfg, run.ctx
    if order == "one-level":
        return (*steps.joint_step(model, x, y, w_opt, a_opt, cfg.grad_clip, ctx), None)
    if order == "first":
        val_loss = steps.alpha_step_first_order(model, xv, yv, a_opt, ctx)
    else:
        val_loss = steps.alpha_step_second_order(model, x, y, xv, yv, lr, w_opt, a_opt, ctx)
    return (*steps.weight_step(model, x, y, w_opt, cfg.grad_clip, ctx), val_loss)


def _state(model, opts, epoch, step, totals):
    w_opt, a_opt, schedule = opts
    return {"model": model.state_dict(), "w_opt": w_opt.state_dict(), "a_opt": a_opt.state_dict(),
            "schedule": schedule.state_dict(), "rng": checkpoint.rng_state(), "epoch": epoch, "step": step,
            "totals": totals}


def train_supernet(run: Run, name: str, model, epochs: int, order: str):
    """Train a supernet for `epochs`, continuing from <out>/<name>/checkpoint.pt when resuming."""
    opts = _optimizers(model, run.cfg, epochs)
    stage_dir = run.out / name
    ckpt = stage_dir / "checkpoint.pt"
    epoch, step, totals = 0, 0, None
    if run.resume and ckpt.is_file():
        state = checkpoint.load(ckpt, map_location=run.device)
        model.load_state_dict(state["model"])
        for obj, key in zip(opts, ("w_opt", "a_opt", "schedule")):
            obj.load_state_dict(state[key])
        checkpoint.set_rng_state(state["rng"])
        epoch, step = state["epoch"], state["step"]
        totals = state["totals"] if run.ctx.is_main else None
        if run.ctx.is_main:
            print(f"[{name}] resuming at epoch {epoch + 1}, step {step}", flush=True)
    while epoch < epochs:
        _train_epoch(run, name, order, model, opts, epoch, epochs, step, totals)
        epoch, step, totals = epoch + 1, 0, None
    return model


def _train_epoch(run, name, order, model, opts, epoch, epochs, step, totals):
    """One epoch from batch `step` on (after a mid-epoch resume); checkpoints and logs it."""
    cfg, ctx, schedule = run.cfg, run.ctx, opts[2]
    model.train()
    run.loaders.set_epoch(epoch, skip_batches=step)
    # training-loss sum, correct, seen, validation-loss sum, validation batches: kept on the device (no sync per step)
    totals = torch.tensor(totals or [0.0] * 5, dtype=torch.float64, device=run.device)
    started, lr, n_batches = time.time(), schedule.get_last_lr()[0], len(run.loaders.train)
    bar = Progress(n_batches, f"[{name}] epoch {epoch + 1}/{epochs}", enabled=ctx.is_main)
    bar.update(step)
    for batch, val_batch in _batches(run, order):
        x, y = (t.to(run.device, non_blocking=True) for t in batch)
        xv, yv = (t.to(run.device, non_blocking=True) for t in val_batch) if val_batch else (None, None)
        loss, logits, val_loss = _step(run, order, model, opts, x, y, xv, yv, lr)
        totals[0] += loss.double() * len(y)
        totals[1] += (logits.argmax(1) == y).sum()
        totals[2] += len(y)
        if val_loss is not None:
            totals[3] += val_loss.double()
            totals[4] += 1
        step += 1
        bar.update()
        if cfg.checkpoint_every and step % cfg.checkpoint_every == 0 and step < n_batches:
            partial = distributed.sum_over_ranks(totals, ctx).tolist()  # a resumed rank 0 carries all ranks' sums
            _save(run, name, _state(model, opts, epoch, step, partial))
    bar.close()
    schedule.step()
    total = distributed.sum_over_ranks(totals, ctx).tolist()
    record = {"stage": name, "epoch": epoch + 1, "epochs": epochs, "train_loss": total[0] / total[2],
              "train_acc": total[1] / total[2], "lr": lr, "seconds": round(time.time() - started, 2),
              **peak_memory(),
              "alpha_softmax": {t: model.edge_weights(t).detach().cpu().tolist() for t in ("normal", "reduce")}}
    if order != "one-level":
        record["val_loss"] = total[3] / max(total[4], 1.0)
    run.log(record)  # before the checkpoint: a resume trims what a later checkpoint does not cover
    _save(run, name, _state(model, opts, epoch + 1, 0, None))


def _save(run: Run, name: str, state: dict) -> None:
    if run.ctx.is_main:
        (run.out / name).mkdir(exist_ok=True)
        checkpoint.save(state, run.out / name / "checkpoint.pt")


# ---- the stages -------------------------------------------------------------------------------------------

def _stage(run: Run, name: str, space: SearchSpace, layers: int, epochs: int, order: str):
    """A fresh supernet (new weights, new α) trained for one stage; reloaded when a resumed run finished it."""
    from .supernet import Supernet

    cfg, info = run.cfg, run.loaders.info
    torch.manual_seed(cfg.seed)
    model = Supernet(space, C=cfg.channels, layers=layers, nodes=cfg.nodes, num_classes=info.num_classes,
                     in_channels=info.in_channels, mode=cfg.memory_mode, kernels=cfg.kernels).to(run.device)
    final = run.out / name / "supernet.pt"
    if run.resume and final.is_file():
        model.load_state_dict(checkpoint.load(final, map_location=run.device))
        if run.ctx.is_main:
            print(f"[{name}] finished before the interruption; loaded {final}", flush=True)
        return model
    distributed.broadcast_state(model, run.ctx)
    train_supernet(run, name, model, epochs, order)
    if run.ctx.is_main:
        torch.save(model.state_dict(), final)
        (run.out / name / "space.json").write_text(json.dumps(space.to_dict(), indent=2) + "\n")
        (run.out / name / "checkpoint.pt").unlink(missing_ok=True)
    return model


def _cluster_images(cfg: SearchConfig) -> torch.Tensor:
    """The fixed, seeded set of training images (no augmentation) whose op outputs are recorded."""
    train, _, _ = datasets(cfg.dataset, cfg.data_root, augment=False, download=cfg.download)
    n = min(cfg.cluster_images, len(train), cfg.limit or len(train))
    order = torch.randperm(len(train), generator=torch.Generator().manual_seed(cfg.seed + 17))[:n]
    return torch.stack([train[int(i)][0] for i in order])


def auto_clusters(run: Run, space: SearchSpace) -> Clusters:
    """Warm up a supernet over all ops (one-level), record op outputs, cluster; writes clusters.json."""
    from . import clustering

    cfg = run.cfg
    path = run.out / "clusters.json"
    if run.resume and path.is_file():
        return Clusters.from_dict(json.loads(path.read_text()), str(path))
    model = _stage(run, "cluster", space, cfg.cluster_layers, cfg.cluster_epochs, "one-level")
    clusters, report = clustering.build_clusters(model, _cluster_images(cfg), cfg.batch_size, run.device, space.ops(),
                                                 cfg.cluster_threshold, cfg.cluster_count or None,
                                                 cfg.cluster_representative)
    if run.ctx.is_main:
        path.write_text(json.dumps(report, indent=2) + "\n")
        print(clustering.render_report(report), flush=True)
    return clusters


def _stacnas(run: Run, space: SearchSpace, summary: dict):
    cfg = run.cfg
    clusters, source = resolve_clusters(cfg, space)
    if clusters is None:
        clusters = auto_clusters(run, space)
    elif run.ctx.is_main:
        (run.out / "clusters.json").write_text(json.dumps({**clusters.to_dict(), "source": source}, indent=2) + "\n")
    summary["clusters"] = clusters.to_dict()
    stage1 = _stage(run, "stage1", stage1_space(space, clusters, cfg.nodes), cfg.stage1_layers, cfg.epochs, run.order)
    choice = chosen_clusters(stage1, clusters)
    if run.ctx.is_main:
        (run.out / "stage1" / "choice.json").write_text(json.dumps(choice, indent=2) + "\n")
    summary["stage1_choice"] = {t: [clusters.groups[c] for c in picks] for t, picks in choice.items()}
    del stage1  # stage 2 never inherits stage-1 weights
    space2 = stage2_space(space, clusters, choice, cfg.nodes)
    return _stage(run, "stage2", space2, cfg.stage2_layers, cfg.epochs, run.order)


# options a resumed search may change: they do not change the numbers (beyond float rounding for the kernels)
RESUME_FREE = {"device", "workers", "kernels", "memory_mode", "checkpoint_every"}
STAGES = {"stacnas": ("cluster", "stage1", "stage2"), "darts": ("darts",), "random": ()}


def _trim_metrics(out: Path, method: str) -> None:
    """On resume, drop metric lines of epochs that no checkpoint covers (they will be run again)."""
    path = out / "metrics.jsonl"
    if not path.is_file():
        return
    done = {}
    for name in STAGES[method]:
        if (out / name / "supernet.pt").is_file():
            done[name] = float("inf")
        elif (out / name / "checkpoint.pt").is_file():
            done[name] = checkpoint.load(out / name / "checkpoint.pt")["epoch"]
    lines = [line for line in path.read_text().splitlines()
             if json.loads(line)["epoch"] <= done.get(json.loads(line)["stage"], 0)]
    path.write_text("".join(line + "\n" for line in lines))


# ---- the whole search --------------------------------------------------------------------------------------

@dataclass
class SearchResult:
    genotype: genotypes.Genotype
    alphas: dict  # cell type -> softmax α of the final supernet (empty for --method random)
    summary: dict


def _start(cfg: SearchConfig, out_dir: str, force: bool, resume: bool, bilevel_split: bool):
    cfg.validate()
    device = distributed.device_for(cfg.device)
    from .fused import resolve_backend

    resolve_backend(cfg.kernels, device)  # an unusable backend fails now, not after the output folder is made
    ctx = distributed.setup(device)
    out = Path(out_dir)
    if ctx.is_main:
        open_run_dir(out_dir, cfg, force, resume, RESUME_FREE, needs=())
    distributed.barrier(ctx)
    torch.manual_seed(cfg.seed)
    loaders = get_loaders(cfg.dataset, cfg.data_root, cfg.batch_size, cfg.val_fraction if bilevel_split else 0.0,
                          augment=True, workers=cfg.workers, seed=cfg.seed, download=cfg.download,
                          limit=cfg.limit or None, rank=ctx.rank, world=ctx.world)
    return Run(cfg, loaders, device, ctx, out, resume, cfg.resolved_order())


def run_search(cfg: SearchConfig, out_dir: str, force: bool = False, resume: bool = False) -> SearchResult:
    """The whole search; writes genotype.json/.txt, clusters.json, metrics.jsonl, stage folders, summary.json."""
    space = load_space(cfg.space)
    if cfg.method == "random":
        return _random_search(cfg, space, out_dir, force)
    run = _start(cfg, out_dir, force, resume, bilevel_split=cfg.resolved_order() != "one-level")
    try:
        if run.ctx.is_main and resume:
            _trim_metrics(run.out, cfg.method)
        summary = {"method": cfg.method, "order": run.order, "space": space.name, "dataset": run.loaders.info.name,
                   "ranks": run.ctx.world}
        if cfg.method == "darts":
            model = _stage(run, "darts", space, cfg.darts_layers, cfg.darts_epochs, run.order)
        else:
            model = _stacnas(run, space, summary)
        genotype = model.genotype()
        alphas = {t: model.edge_weights(t).detach().cpu() for t in ("normal", "reduce")}
        summary.update(genotype=genotypes.to_dict(genotype), seconds=round(time.time() - run.started, 1),
                       **peak_memory())
        if run.ctx.is_main:
            _write_result(run.out, genotype, summary)
        return SearchResult(genotype, alphas, summary)
    finally:
        distributed.teardown(run.ctx)


def _random_search(cfg: SearchConfig, space: SearchSpace, out_dir: str, force: bool) -> SearchResult:
    cfg.validate()
    out = open_run_dir(out_dir, cfg, force, resume=False, free=set(), needs=())
    genotype = random_genotype(space, cfg.nodes, cfg.seed)
    summary = {"method": "random", "space": space.name, "seed": cfg.seed, "genotype": genotypes.to_dict(genotype),
               "seconds": 0.0, **peak_memory()}
    _write_result(out, genotype, summary)
    return SearchResult(genotype, {}, summary)


def _write_result(out: Path, genotype, summary: dict) -> None:
    genotypes.save(genotype, out / "genotype.json")
    genotypes.save(genotype, out / "genotype.txt")
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(render_summary(summary, out))


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
    for cell_type in ("normal", "reduce"):
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
    space = load_space(cfg.space)
    run = _start(cfg, out_dir, force, resume=False, bilevel_split=False)
    try:
        return auto_clusters(run, space)
    finally:
        distributed.teardown(run.ctx)
