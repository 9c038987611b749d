"""Final training of a found cell from scratch, evaluation and export (DESIGN.md §1, "Final training").

The network (NetworkCIFAR, or NetworkImageNet in the mobile setting) is trained with SGD, a cosine or ×γ-per-epoch
learning rate, drop-path ramped linearly over the epochs (never on identity edges), an auxiliary head weighted into
the loss, gradient clipping, and optionally mixed precision, channels-last and torch.compile. The reported accuracy
is the test accuracy after the last epoch — never the best epoch on the test set. Runs data-parallel under torchrun
(DistributedDataParallel), resumes exactly on the CPU, writes only on rank 0.
"""
from __future__ import annotations

import contextlib
import json
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from . import checkpoint, distributed, genotypes
from .config import open_run_dir, option
from .data import get_loaders
from .info import peak_memory
from .network import NetworkCIFAR, NetworkImageNet
from .progress import Progress


@dataclass
class TrainConfig:
    genotype: str = option("DARTS_V2", "the cell: a known name (DARTS_V2, ...), a search's genotype.json or "
                                       "genotype.txt, or DARTS 'Genotype(...)' text")
    dataset: str = option("digits", "dataset (digits is built in and offline)")
    data_root: str | None = option(None, "folder holding the dataset files", type=str)
    download: bool = option(False, "download the dataset if missing (where a network exists)")
    limit: int = option(0, "use at most this many training and test images (0: all)")
    network: str = option("auto", "cifar (3×3 stem), imagenet (mobile setting: stem reducing ×8) or auto "
                                  "(imagenet for the imagenet dataset)", choices=["auto", "cifar", "imagenet"])
    image_size: int = option(0, "input size for imagenet/folder datasets (0: 224 for imagenet, else 32)")
    layers: int = option(20, "cells")
    channels: int = option(36, "initial channels C")
    epochs: int = option(600, "training epochs")
    batch_size: int = option(96, "mini-batch size (per process under torchrun)")
    lr: float = option(0.025, "SGD learning rate")
    lr_min: float = option(0.0, "final learning rate of the cosine schedule")
    lr_schedule: str = option("cosine", "cosine (to lr-min) or exponential (×lr-decay per epoch)",
                              choices=["cosine", "exponential"])
    lr_decay: float = option(0.97, "per-epoch factor of the exponential schedule")
    scale_lr: bool = option(False, "multiply lr by the number of processes (linear scaling for the global batch)")
    momentum: float = option(0.9, "SGD momentum")
    weight_decay: float = option(3e-4, "weight decay")
    grad_clip: float = option(5.0, "clip the gradient norm at this value")
    cutout: int = option(16, "cutout length (0: none)")
    drop_path: float = option(0.2, "drop-path probability reached at the last epoch (ramped linearly from 0)")
    auxiliary_weight: float = option(0.4, "weight of the auxiliary head's loss (0: no auxiliary head)")
    label_smoothing: float = option(0.0, "label smoothing of the cross-entropy")
    amp: str = option("none", "mixed precision: none, bf16 or fp16 (fp16 on CUDA only)",
                      choices=["none", "bf16", "fp16"])
    channels_last: bool = option(False, "channels-last memory format (faster convolutions on recent GPUs)")
    compile: bool = option(False, "compile the network with torch.compile")
    seed: int = option(0, "random seed of weights, data order and augmentation")
    workers: int = option(0, "data-loading worker processes")
    checkpoint_every: int = option(0, "also checkpoint every this many steps (0: at the end of every epoch only)")
    device: str = option("auto", "cpu, cuda or auto")

    def validate(self):
        for name in ("layers", "channels", "epochs", "batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name.replace('_', '-')} must be at least 1, got {getattr(self, name)}")
        if self.layers < 3:
            raise ValueError(f"layers must be at least 3 (two reduction cells and a normal one), got {self.layers}")
        for name in ("drop_path", "label_smoothing"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ValueError(f"{name.replace('_', '-')} must be in [0, 1), got {getattr(self, name)}")
        if self.auxiliary_weight < 0 or self.lr <= 0:
            raise ValueError("lr must be positive and auxiliary-weight at least 0")


# ---- the network ------------------------------------------------------------------------------------------

def architecture(cfg: TrainConfig, genotype, info) -> dict:
    """Everything needed to rebuild the network (saved with its weights)."""
    kind = cfg.network if cfg.network != "auto" else ("imagenet" if info.name == "imagenet" else "cifar")
    return {"network": kind, "genotype": genotypes.to_dict(genotype), "C": cfg.channels, "layers": cfg.layers,
            "num_classes": info.num_classes, "in_channels": info.in_channels, "image_size": info.image_size,
            "auxiliary": cfg.auxiliary_weight > 0}


def build_network(arch: dict) -> nn.Module:
    genotype = genotypes.from_dict(arch["genotype"])
    cls = NetworkImageNet if arch["network"] == "imagenet" else NetworkCIFAR
    return cls(genotype, C=arch["C"], num_classes=arch["num_classes"], layers=arch["layers"],
               auxiliary=arch["auxiliary"], in_channels=arch["in_channels"])


def count_parameters_m(model) -> float:
    """Parameters without the auxiliary head, in millions (10^6), as the field reports them."""
    return sum(p.numel() for p in model.weights_without_auxiliary()) / 1e6


@torch.no_grad()
def count_macs(model: nn.Module, arch: dict) -> int:
    """Multiply-adds of one inference (convolutions and linear layers; the auxiliary head is not run)."""
    total = [0]

    def hook(module, _, output):
        if isinstance(module, nn.Conv2d):
            kernel = module.kernel_size[0] * module.kernel_size[1] * module.in_channels // module.groups
            total[0] += output.numel() * kernel
        else:
            total[0] += output.numel() * module.in_features

    hooks = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    was_training = model.training
    model.eval()
    try:
        param = next(model.parameters())
        model(torch.zeros(1, arch["in_channels"], arch["image_size"], arch["image_size"], device=param.device))
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    return total[0]


class Inference(nn.Module):
    """The network as a plain image → logits function (what export and deployment want)."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, x):
        return self.net(x)[0]


# ---- one run ----------------------------------------------------------------------------------------------

def _autocast(cfg: TrainConfig, device: torch.device):
    if cfg.amp == "none":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16 if cfg.amp == "bf16" else torch.float16)


def _schedule(optimizer, cfg: TrainConfig):
    if cfg.lr_schedule == "exponential":
        return torch.optim.lr_scheduler.StepLR(optimizer, 1, gamma=cfg.lr_decay)
    return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, cfg.epochs, eta_min=cfg.lr_min)


def drop_path_at(cfg: TrainConfig, epoch: int) -> float:
    """DARTS' linear ramp: drop_path × epoch / epochs at the start of each epoch (0 in the first)."""
    return cfg.drop_path * epoch / cfg.epochs


def training_loss(logits, logits_aux, y, cfg: TrainConfig):
    loss = F.cross_entropy(logits, y, label_smoothing=cfg.label_smoothing)
    if logits_aux is not None and cfg.auxiliary_weight > 0:
        loss = loss + cfg.auxiliary_weight * F.cross_entropy(logits_aux, y, label_smoothing=cfg.label_smoothing)
    return loss


@torch.no_grad()
def evaluate(model: nn.Module, loader, device, amp_context=contextlib.nullcontext, channels_last=False) -> dict:
    """Top-1 and top-5 accuracy (in %) and mean loss over a whole loader."""
    model.eval()
    sums = torch.zeros(3, dtype=torch.float64, device=device)  # top-1 hits, top-5 hits, loss: no sync per batch
    seen = 0
    for x, y in loader:
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with amp_context():
            logits = model(x)[0].float()
        top = logits.topk(min(5, logits.shape[1]), dim=1).indices
        sums[0] += (top[:, 0] == y).sum()
        sums[1] += (top == y[:, None]).any(1).sum()
        sums[2] += F.cross_entropy(logits, y, reduction="sum").double()
        seen += len(y)
    top1, top5, loss = sums.tolist()
    return {"top1": 100.0 * top1 / seen, "top5": 100.0 * top5 / seen, "loss": loss / seen}


@dataclass
class Trainer:
    cfg: TrainConfig
    out: Path
    device: torch.device
    ctx: distributed.Context
    loaders: object
    arch: dict
    net: nn.Module  # the network itself (state_dict, drop-path, evaluation)
    model: nn.Module  # what the training step calls: net, possibly compiled and wrapped in DDP
    optimizer: torch.optim.Optimizer
    schedule: object
    scaler: torch.amp.GradScaler

    def state(self, epoch: int, step: int, totals) -> dict:
        return {"model": self.net.state_dict(), "optimizer": self.optimizer.state_dict(),
                "schedule": self.schedule.state_dict(), "scaler": self.scaler.state_dict(),
                "rng": checkpoint.rng_state(), "epoch": epoch, "step": step, "totals": totals}

    def save(self, epoch: int, step: int, totals=None) -> None:
        if self.ctx.is_main:
            checkpoint.save(self.state(epoch, step, totals), self.out / "checkpoint.pt")

    def restore(self) -> tuple[int, int, list | None]:
        state = checkpoint.load(self.out / "checkpoint.pt", map_location=self.device)
        self.net.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.schedule.load_state_dict(state["schedule"])
        self.scaler.load_state_dict(state["scaler"])
        checkpoint.set_rng_state(state["rng"])
        # the saved sums are over all ranks: rank 0 carries them, the others start from zero
        return state["epoch"], state["step"], state["totals"] if self.ctx.is_main else None

    def step(self, x, y) -> tuple[torch.Tensor, torch.Tensor]:
        cfg = self.cfg
        with _autocast(cfg, self.device):
            logits, logits_aux = self.model(x)
            loss = training_loss(logits.float(), None if logits_aux is None else logits_aux.float(), y, cfg)
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.unscale_(self.optimizer)
        nn.utils.clip_grad_norm_(self.net.parameters(), cfg.grad_clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        return loss.detach(), logits.detach()

    def epoch(self, epoch: int, step: int, totals) -> dict:
        cfg, device = self.cfg, self.device
        self.net.train()
        self.net.drop_path_prob = drop_path_at(cfg, epoch)
        self.loaders.set_epoch(epoch, skip_batches=step)
        totals = torch.tensor(totals or [0.0, 0.0, 0.0], dtype=torch.float64, device=device)  # loss, correct, seen
        started, lr, n = time.time(), self.schedule.get_last_lr()[0], len(self.loaders.train)
        bar = Progress(n, f"epoch {epoch + 1}/{cfg.epochs}", enabled=self.ctx.is_main)
        bar.update(step)
        for x, y in self.loaders.train:
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            if cfg.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            loss, logits = self.step(x, y)
            totals[0] += loss.double() * len(y)
            totals[1] += (logits.argmax(1) == y).sum()
            totals[2] += len(y)
            step += 1
            bar.update()
            if cfg.checkpoint_every and step % cfg.checkpoint_every == 0 and step < n:
                self.save(epoch, step, distributed.sum_over_ranks(totals, self.ctx).tolist())
        bar.close()
        self.schedule.step()
        total = distributed.sum_over_ranks(totals, self.ctx).tolist()
        test = evaluate(self.net, self.loaders.test, device, lambda: _autocast(cfg, device), cfg.channels_last)
        return {"epoch": epoch + 1, "epochs": cfg.epochs, "train_loss": total[0] / total[2],
                "train_acc": 100.0 * total[1] / total[2], "test_top1": test["top1"], "test_top5": test["top5"],
                "test_loss": test["loss"], "lr": lr, "drop_path": self.net.drop_path_prob,
                "seconds": round(time.time() - started, 2), **peak_memory()}


def _log(out: Path, record: dict) -> None:
    with (out / "metrics.jsonl").open("a") as f:
        f.write(json.dumps(record) + "\n")
    print(f"epoch {record['epoch']}/{record['epochs']}: train loss {record['train_loss']:.4f} "
          f"acc {record['train_acc']:.2f}% · test top-1 {record['test_top1']:.2f}% · lr {record['lr']:.4g} "
          f"({record['seconds']:.1f}s)", flush=True)


def _make_trainer(cfg: TrainConfig, out: Path, device, ctx, genotype) -> Trainer:
    loaders = get_loaders(cfg.dataset, cfg.data_root, cfg.batch_size, 0.0, augment=True, cutout=cfg.cutout,
                          workers=cfg.workers, seed=cfg.seed, download=cfg.download,
                          image_size=cfg.image_size or None, limit=cfg.limit or None, rank=ctx.rank, world=ctx.world)
    arch = architecture(cfg, genotype, loaders.info)
    torch.manual_seed(cfg.seed)
    net = build_network(arch).to(device)
    if cfg.channels_last:
        net = net.to(memory_format=torch.channels_last)
    distributed.broadcast_state(net, ctx)
    model = torch.compile(net) if cfg.compile else net
    if ctx.active:
        model = nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    lr = cfg.lr * (ctx.world if cfg.scale_lr else 1)
    optimizer = torch.optim.SGD(net.parameters(), lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    scaler = torch.amp.GradScaler(device.type, enabled=cfg.amp == "fp16")
    return Trainer(cfg, out, device, ctx, loaders, arch, net, model, optimizer, _schedule(optimizer, cfg), scaler)


def _check_amp(cfg: TrainConfig, device) -> None:
    if cfg.amp == "fp16" and device.type != "cuda":
        raise ValueError("--amp fp16 needs a CUDA device; use --amp bf16 on the CPU")


def _trim_metrics(out: Path, epochs_done: int) -> None:
    path = out / "metrics.jsonl"
    if path.is_file():
        keep = [line for line in path.read_text().splitlines() if json.loads(line)["epoch"] <= epochs_done]
        path.write_text("".join(line + "\n" for line in keep))


def run_train(cfg: TrainConfig, out_dir: str, force: bool = False, resume: bool = False) -> dict:
    """Train the genotype from scratch; writes model.pt, result.json, metrics.jsonl, config and environment."""
    cfg.validate()
    genotype = genotypes.load(cfg.genotype)
    device = distributed.device_for(cfg.device)
    _check_amp(cfg, device)
    ctx = distributed.setup(device)
    out = Path(out_dir)
    try:
        if ctx.is_main:
            open_run_dir(out_dir, cfg, force, resume, {"device", "workers", "checkpoint_every", "compile"},
                         needs=("checkpoint.pt",))
            genotypes.save(genotype, out / "genotype.json")
        distributed.barrier(ctx)
        trainer = _make_trainer(cfg, out, device, ctx, genotype)
        epoch, step, totals = trainer.restore() if resume else (0, 0, None)
        if ctx.is_main and resume:
            _trim_metrics(out, epoch)
            print(f"resuming at epoch {epoch + 1}, step {step}", flush=True)
        started = time.time()
        record = None
        while epoch < cfg.epochs:
            record = trainer.epoch(epoch, step, totals)
            if ctx.is_main:
                _log(out, record)
            epoch, step, totals = epoch + 1, 0, None
            trainer.save(epoch, 0)
        return _finish(trainer, record, time.time() - started)
    finally:
        distributed.teardown(ctx)


def _finish(trainer: Trainer, record: dict | None, seconds: float) -> dict:
    """result.json: the last epoch's test accuracy (evaluated again if the run resumed after its last epoch)."""
    net, cfg = trainer.net, trainer.cfg
    test = evaluate(net, trainer.loaders.test, trainer.device, lambda: _autocast(cfg, trainer.device),
                    cfg.channels_last) if record is None else {"top1": record["test_top1"], "top5": record["test_top5"]}
    result = {"dataset": trainer.loaders.info.name, "genotype": trainer.arch["genotype"], "epochs": cfg.epochs,
              "test_top1": test["top1"], "test_top5": test["top5"], "reported": "last epoch (never best-on-test)",
              "params_m": round(count_parameters_m(net), 4), "macs_m": round(count_macs(net, trainer.arch) / 1e6, 2),
              "train_seconds": round(seconds, 1), "processes": trainer.ctx.world, **peak_memory()}
    if trainer.ctx.is_main:
        out = trainer.out
        torch.save({"arch": trainer.arch, "model": net.state_dict()}, out / "model.pt")
        (out / "result.json").write_text(json.dumps(result, indent=2) + "\n")
        (out / "checkpoint.pt").unlink(missing_ok=True)
        print(f"test top-1 {result['test_top1']:.2f}% (top-5 {result['test_top5']:.2f}%) after the last epoch · "
              f"{result['params_m']:.3f}M params · {result['macs_m']:.1f}M multiply-adds · weights in "
              f"{out / 'model.pt'}", flush=True)
    return result


# ---- a trained network: evaluation and export -------------------------------------------------------------

def load_trained(path: str, device="cpu") -> tuple[nn.Module, dict]:
    """A network saved by `stacnas train` (model.pt), read with weights_only=True."""
    state = checkpoint.load(Path(path), map_location=device)
    if not isinstance(state, dict) or "arch" not in state or "model" not in state:
        raise ValueError(f"{path} is not a trained stacnas network (expected the model.pt that 'stacnas train' "
                         "writes)")
    net = build_network(state["arch"]).to(device)
    net.load_state_dict(state["model"])
    return net.eval(), state["arch"]


def run_eval(path: str, dataset: str, data_root=None, batch_size=256, device="auto", limit=0, workers=0) -> dict:
    device = distributed.device_for(device)
    net, arch = load_trained(path, device)
    loaders = get_loaders(dataset, data_root, batch_size, augment=False, workers=workers,
                          image_size=arch["image_size"] if dataset in ("imagenet", "folder") else None,
                          limit=limit or None)
    info = loaders.info
    if (info.num_classes, info.in_channels) != (arch["num_classes"], arch["in_channels"]):
        raise ValueError(f"{path} was trained for {arch['num_classes']} classes of {arch['in_channels']}-channel "
                         f"images; {info.name} has {info.num_classes} classes of {info.in_channels}-channel images")
    result = evaluate(net, loaders.test, device)
    return {"checkpoint": str(path), "dataset": info.name, "test_top1": result["top1"], "test_top5": result["top5"],
            "test_loss": result["loss"], "images": len(loaders.test.dataset)}


EXPORT_FORMATS = ("export", "torchscript", "onnx")


def export(path: str, out: str, fmt: str = "export", batch_size: int = 1) -> Path:
    """Write a trained network for inference: torch.export (.pt2), TorchScript (.pt) or ONNX (.onnx)."""
    if fmt not in EXPORT_FORMATS:
        raise ValueError(f"unknown export format {fmt!r}; choose one of {', '.join(EXPORT_FORMATS)}")
    net, arch = load_trained(path)
    model = Inference(net).eval()
    example = torch.randn(batch_size, arch["in_channels"], arch["image_size"], arch["image_size"])
    target = Path(out)
    if target.exists():
        raise FileExistsError(f"{target} already exists; choose another file name")
    if fmt == "export":
        torch.export.save(torch.export.export(model, (example,)), str(target))
    elif fmt == "torchscript":
        with torch.no_grad():
            torch.jit.save(torch.jit.trace(model, example), str(target))
    else:
        try:
            torch.onnx.export(model, (example,), str(target), input_names=["images"], output_names=["logits"],
                              dynamo=True)
        except ImportError as err:
            raise RuntimeError(f"ONNX export needs the onnx and onnxscript packages ({err}); "
                               "pip install onnx onnxscript") from None
    return target
