"""Architecture search: StacNAS' two stages (cluster level, then operator level at the final depth) and the
plain single-stage DARTS baseline, both with one-level optimization (weights and α stepped on one loss).
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

from . import genotypes
from .config import prepare_out_dir, save_run_info
from .data import get_loaders
from .spaces import PAPER_CLUSTERS, Clusters, SearchSpace, load_space


def _opt(default, help, **meta):
    return field(default=default, metadata={"help": help, **meta})


@dataclass
class SearchConfig:
    method: str = _opt("stacnas", "stacnas: stage 1 (clusters) then stage 2 (ops); darts: one stage over all ops",
                       choices=["stacnas", "darts"])
    space: str = _opt("darts", "search space: darts, s1, s2, s3, s4 or a YAML/JSON space file")
    dataset: str = _opt("digits", "dataset (digits is built in and offline)")
    data_root: str | None = _opt(None, "folder holding the dataset files", type=str)
    download: bool = _opt(False, "download the dataset if missing (where a network exists)")
    limit: int = _opt(0, "use at most this many training images (0: all)")
    seed: int = _opt(0, "random seed of weights, α and data order")
    batch_size: int = _opt(64, "mini-batch size")
    workers: int = _opt(0, "data-loading worker processes")
    channels: int = _opt(16, "initial channels C of the supernet")
    nodes: int = _opt(4, "intermediate nodes per cell")
    stage1_layers: int = _opt(14, "cells in the stage-1 (cluster-level) supernet")
    stage2_layers: int = _opt(20, "cells in the stage-2 supernet (the final depth: complexity match)")
    darts_layers: int = _opt(8, "cells in the DARTS baseline supernet")
    epochs: int = _opt(80, "epochs per stage")
    w_lr: float = _opt(0.025, "SGD learning rate of the weights (cosine schedule)")
    w_lr_min: float = _opt(0.001, "final learning rate of the cosine schedule")
    w_momentum: float = _opt(0.9, "SGD momentum")
    w_weight_decay: float = _opt(3e-4, "weight decay of the weights")
    grad_clip: float = _opt(3.0, "clip the weights' gradient norm at this value")
    a_lr: float = _opt(3e-4, "Adam learning rate of α")
    a_betas: tuple = _opt((0.5, 0.999), "Adam betas of α")
    a_weight_decay: float = _opt(1e-3, "weight decay of α")
    device: str = _opt("auto", "cpu, cuda or auto")
    memory_mode: str = _opt("lean", "supernet memory mode: lean (fused, exact, about half the memory), recompute "
                                    "(least memory, recomputes in backward) or reference (plain PyTorch)",
                            choices=["lean", "recompute", "reference"])
    kernels: str = _opt("auto", "kernel backend of the fused sum: auto, reference, cpp, cuda or triton",
                        choices=["auto", "reference", "cpp", "cuda", "triton"])

    def validate(self):
        if self.method not in ("stacnas", "darts"):
            raise ValueError(f"method must be stacnas or darts, got {self.method!r}")
        for name in ("batch_size", "channels", "nodes", "epochs"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name.replace('_', '-')} must be at least 1, got {getattr(self, name)}")
        for name in ("stage1_layers", "stage2_layers", "darts_layers"):
            if getattr(self, name) < 3:
                raise ValueError(f"{name.replace('_', '-')} must be at least 3 (two reduction cells and a normal)")


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


# ---- training one supernet -------------------------------------------------------------------------------

def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda was asked for but no GPU is visible; use --device cpu")
    return torch.device(name)


def train_supernet(model, loader, cfg: SearchConfig, device, log, stage: str):
    """One-level optimization: each mini-batch, one loss, then weights (SGD) and α (Adam) step together."""
    w_opt = torch.optim.SGD(model.weights(), cfg.w_lr, momentum=cfg.w_momentum, weight_decay=cfg.w_weight_decay)
    a_opt = torch.optim.Adam(model.alphas(), cfg.a_lr, betas=tuple(cfg.a_betas), weight_decay=cfg.a_weight_decay)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(w_opt, cfg.epochs, eta_min=cfg.w_lr_min)
    weights = list(model.weights())
    for epoch in range(cfg.epochs):
        model.train()
        start, seen = time.time(), 0
        loss_sum = correct = torch.zeros((), device=device)  # summed on the device: no sync per step
        lr = schedule.get_last_lr()[0]
        for x, y in loader:
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            logits = model(x)
            loss = F.cross_entropy(logits, y)
            w_opt.zero_grad(set_to_none=True)
            a_opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(weights, cfg.grad_clip)
            w_opt.step()
            a_opt.step()
            loss_sum = loss_sum + loss.detach() * len(y)
            correct = correct + (logits.argmax(1) == y).sum()
            seen += len(y)
        schedule.step()
        record = {"stage": stage, "epoch": epoch + 1, "train_loss": loss_sum.item() / seen,
                  "train_acc": correct.item() / seen,
                  "lr": lr, "seconds": time.time() - start,
                  "alpha_softmax": {t: model.edge_weights(t).detach().cpu().tolist() for t in ("normal", "reduce")}}
        log(record)


# ---- the whole search --------------------------------------------------------------------------------------

def _metrics_logger(path: Path):
    def log(record):
        with path.open("a") as f:
            f.write(json.dumps(record) + "\n")
        print(f"[{record['stage']}] epoch {record['epoch']}: loss {record['train_loss']:.4f} "
              f"acc {record['train_acc']:.3f} lr {record['lr']:.4g} ({record['seconds']:.1f}s)", flush=True)
    return log


def _run_stage(name, space, layers, cfg, loaders, device, out, log):
    from .supernet import Supernet

    torch.manual_seed(cfg.seed)  # every stage starts fresh: new weights, new α
    info = loaders.info
    model = Supernet(space, C=cfg.channels, layers=layers, nodes=cfg.nodes, num_classes=info.num_classes,
                     in_channels=info.in_channels, mode=cfg.memory_mode, kernels=cfg.kernels).to(device)
    train_supernet(model, loaders.train, cfg, device, log, name)
    stage_dir = out / name
    stage_dir.mkdir(exist_ok=True)
    torch.save(model.state_dict(), stage_dir / "supernet.pt")
    (stage_dir / "space.json").write_text(json.dumps(space.to_dict(), indent=2) + "\n")
    return model


def run_search(cfg: SearchConfig, out_dir: str, force: bool = False) -> genotypes.Genotype:
    cfg.validate()
    space = load_space(cfg.space)
    device = _device(cfg.device)
    from .fused import resolve_backend

    resolve_backend(cfg.kernels, device)  # an unusable backend fails now, not after the output folder is made
    out = prepare_out_dir(out_dir, force)
    save_run_info(out, cfg)
    torch.manual_seed(cfg.seed)
    loaders = get_loaders(cfg.dataset, cfg.data_root, cfg.batch_size, 0.0, augment=True, workers=cfg.workers,
                          seed=cfg.seed, download=cfg.download, limit=cfg.limit or None)
    log = _metrics_logger(out / "metrics.jsonl")
    started = time.time()
    summary = {"method": cfg.method, "space": space.name, "dataset": loaders.info.name}
    if cfg.method == "darts":
        model = _run_stage("darts", space, cfg.darts_layers, cfg, loaders, device, out, log)
    else:
        clusters = space.clusters or (PAPER_CLUSTERS if space.name == "darts" else None)
        if clusters is None:
            raise ValueError(f"space {space.name!r} has no clusters: give 'clusters' in the space file "
                             "(automatic clustering is not available yet) or use --method darts")
        (out / "clusters.json").write_text(json.dumps(clusters.to_dict(), indent=2) + "\n")
        stage1 = _run_stage("stage1", stage1_space(space, clusters, cfg.nodes), cfg.stage1_layers, cfg, loaders,
                            device, out, log)
        choice = chosen_clusters(stage1, clusters)
        (out / "stage1" / "choice.json").write_text(json.dumps(choice, indent=2) + "\n")
        summary["stage1_clusters"] = {t: [clusters.groups[c][0] if len(clusters.groups[c]) == 1
                                          else "{" + ",".join(clusters.groups[c]) + "}" for c in picks]
                                      for t, picks in choice.items()}
        model = _run_stage("stage2", stage2_space(space, clusters, choice, cfg.nodes), cfg.stage2_layers, cfg,
                           loaders, device, out, log)
    genotype = model.genotype()
    genotypes.save(genotype, out / "genotype.json")
    genotypes.save(genotype, out / "genotype.txt")
    summary.update(genotype=genotypes.to_dict(genotype), seconds=round(time.time() - started, 1))
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(f"search done in {summary['seconds']}s; genotype written to {out / 'genotype.txt'}:")
    print(genotypes.to_text(genotype))
    return genotype
