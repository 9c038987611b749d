"""Final training of a found cell from scratch (DESIGN.md §1, "Final training") on the shared epoch loop.

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
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from .. import files, genotypes, report
from ..data import get_loaders
from ..errors import UsageError, warn
from ..runtime import checkpoint, distributed
from ..runtime.epochs import EpochLoop
from ..runtime.metrics import MetricsLog, peak_memory
from ..runtime.precision import autocast, check_amp, grad_scaler
from ..runtime.run_dir import check_out_dir, clean_on_early_failure, config_hash, open_run_dir
from .config import RESUME_FREE, TrainConfig
from .network import build_network, count_macs, count_parameters_m


def network_kind(cfg: TrainConfig, info) -> str:
    """cifar or imagenet, checked to fit the dataset's images (two reduction cells, after the ImageNet stem's ×8)."""
    kind = cfg.network if cfg.network != "auto" else ("imagenet" if info.name == "imagenet" else "cifar")
    smallest = 4 * (8 if kind == "imagenet" else 1)
    if info.image_size < smallest:
        raise UsageError(f"--network {kind} reduces its input {smallest}× and needs images of at least "
                         f"{smallest}×{smallest}; {info.name} has {info.image_size}×{info.image_size}"
                         + (" (use --network cifar)" if kind == "imagenet" else ""))
    return kind


def architecture(cfg: TrainConfig, genotype, info) -> dict:
    """Everything needed to rebuild the network (saved with its weights)."""
    kind = network_kind(cfg, info)
    return {"network": kind, "genotype": genotypes.to_dict(genotype), "C": cfg.channels, "layers": cfg.layers,
            "num_classes": info.num_classes, "in_channels": info.in_channels, "image_size": info.image_size,
            "auxiliary": cfg.auxiliary_weight > 0}


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


class Trainer(EpochLoop):
    """The epochs of a training run; its checkpoint is <out>/checkpoint.pt. `net` is the network itself (state_dict,
    drop-path, evaluation), `model` what the training step calls: net, possibly compiled and wrapped in DDP."""

    sums_size = 3  # training-loss sum, correct, seen

    def __init__(self, cfg: TrainConfig, out: Path, device, ctx, loaders, arch: dict):
        self.cfg, self.out, self.arch = cfg, out, arch
        torch.manual_seed(cfg.seed)
        self.net = build_network(self.arch).to(device)
        if cfg.channels_last:
            self.net = self.net.to(memory_format=torch.channels_last)
        distributed.broadcast_state(self.net, ctx)
        self.model = torch.compile(self.net) if cfg.compile else self.net
        if ctx.active:
            self.model = nn.parallel.DistributedDataParallel(
                self.model, device_ids=[device.index] if device.type == "cuda" else None)
        lr = cfg.lr * (ctx.world if cfg.scale_lr else 1)
        self.optimizer = torch.optim.SGD(self.net.parameters(), lr, momentum=cfg.momentum,
                                         weight_decay=cfg.weight_decay)
        self.schedule = _schedule(self.optimizer, cfg)
        self.scaler = grad_scaler(cfg.amp, device)
        super().__init__(stage=None, checkpoint_path=out / "checkpoint.pt",
                         stateful={"model": self.net, "optimizer": self.optimizer, "schedule": self.schedule,
                                   "scaler": self.scaler},
                         ctx=ctx, device=device, loaders=loaders,
                         metrics=MetricsLog(out / "metrics.jsonl", ctx.is_main,
                                            out / "tensorboard" if cfg.tensorboard else None),
                         epochs=cfg.epochs,
                         checkpoint_every=cfg.checkpoint_every, config_hash=config_hash(cfg, RESUME_FREE))

    def step(self, x, y) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """One training step: (loss, logits, the gradient norm before clipping)."""
        cfg = self.cfg
        with autocast(cfg.amp, self.device):
            logits, logits_aux = self.model(x)
            loss = training_loss(logits.float(), None if logits_aux is None else logits_aux.float(), y, cfg)
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.unscale_(self.optimizer)
        grad_norm = nn.utils.clip_grad_norm_(self.net.parameters(), cfg.grad_clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        return loss.detach(), logits.detach(), grad_norm

    def begin_epoch(self, epoch: int) -> None:
        self.net.train()
        self.net.drop_path_prob = drop_path_at(self.cfg, epoch)
        self.lr = self.schedule.get_last_lr()[0]

    def run_batch(self, batch) -> tuple[list, dict]:
        x, y = (t.to(self.device, non_blocking=True) for t in batch)
        if self.cfg.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        loss, logits, grad_norm = self.step(x, y)
        finite = {"training loss": loss}
        if not self.scaler.is_enabled():  # fp16's scaler skips the steps whose gradients overflow: expected
            finite["gradient norm"] = grad_norm
        return [loss.double() * len(y), (logits.argmax(1) == y).sum(), len(y)], finite

    def test(self) -> dict:
        return evaluate(self.net, self.loaders.test, self.device, lambda: autocast(self.cfg.amp, self.device),
                        self.cfg.channels_last)

    def end_epoch(self, epoch: int, total: list[float], started: float) -> tuple[dict, str]:
        self.schedule.step()
        test = self.test()
        record = {"epoch": epoch + 1, "epochs": self.epochs, "train_loss": total[0] / total[2],
                  "train_acc": 100.0 * total[1] / total[2], "test_top1": test["top1"], "test_top5": test["top5"],
                  "test_loss": test["loss"], "lr": self.lr, "drop_path": self.net.drop_path_prob,
                  "seconds": round(time.time() - started, 2), **peak_memory()}
        return record, (f"train loss {record['train_loss']:.4f} acc {record['train_acc']:.2f}% · test top-1 "
                        f"{record['test_top1']:.2f}% · lr {record['lr']:.4g}")


def run_train(cfg: TrainConfig, out_dir: str, force: bool = False, resume: bool = False) -> dict:
    """Train the genotype from scratch; writes model.pt, result.json, metrics.jsonl, config and environment."""
    cfg.validate()
    genotype = genotypes.load(cfg.genotype)
    zeros = genotypes.zero_edges(genotype)
    if zeros:
        warn(f"the genotype keeps `none` on {', '.join(zeros)}: built as a zero op, as DARTS' model.py does (the "
             "edge adds nothing to its node)")
    device = distributed.device_for(cfg.device)
    check_amp(cfg.amp, device)
    if resume and _stopped_while_reporting(Path(out_dir)):
        return _write_missing_report(Path(out_dir))
    if not resume:
        check_out_dir(out_dir, force)
    ctx = distributed.setup(device)
    out = Path(out_dir)
    try:
        loaders = get_loaders(cfg.dataset, cfg.data_root, cfg.batch_size, 0.0, augment=True, cutout=cfg.cutout,
                              workers=cfg.workers, seed=cfg.seed, download=cfg.download,
                              image_size=cfg.image_size or None, limit=cfg.limit or None, rank=ctx.rank,
                              world=ctx.world)
        arch = architecture(cfg, genotype, loaders.info)  # every check done: the run folder may be written now
        if ctx.is_main:
            open_run_dir(out_dir, cfg, force, resume, RESUME_FREE, needs=(("checkpoint.pt", "checkpoint.prev.pt"),))
            genotypes.save(genotype, out / "genotype.json")
        distributed.barrier(ctx)
        with clean_on_early_failure(out, fresh=not resume and ctx.is_main):
            trainer = Trainer(cfg, out, device, ctx, loaders, arch)
            started = time.time()
            record = trainer.run(resume)
            return _finish(trainer, record, time.time() - started)
    finally:
        distributed.teardown(ctx)


def _stopped_while_reporting(out: Path) -> bool:
    """The run wrote its result and removed its checkpoint, but not the report it was to write: it was stopped while
    writing that. (A finished run with its report, or without one by --no-report, has nothing to resume: open_run_dir
    says so.)"""
    if not (out / "result.json").is_file() or (out / "checkpoint.pt").is_file() or (out / "report.html").is_file():
        return False
    try:
        return json.loads((out / "config.json").read_text()).get("report", True)
    except (OSError, ValueError):
        return True


def _write_missing_report(out: Path) -> dict:
    """--resume of a run stopped while writing its report: nothing to train; the report is written."""
    print(f"--resume: {out} finished training (result.json); writing its report", flush=True)
    report.after_run(out)
    return json.loads(files.read_text(out / "result.json", "the finished run's"))


def _finish(trainer: Trainer, record: dict | None, seconds: float) -> dict:
    """result.json: the last epoch's test accuracy (evaluated again if the run resumed after its last epoch)."""
    net, cfg = trainer.net, trainer.cfg
    test = trainer.test() if record is None else {"top1": record["test_top1"], "top5": record["test_top5"]}
    result = {"dataset": trainer.loaders.info.name, "genotype": trainer.arch["genotype"], "epochs": cfg.epochs,
              "test_top1": test["top1"], "test_top5": test["top5"], "reported": "last epoch (never best-on-test)",
              "params_m": round(count_parameters_m(net), 4), "macs_m": round(count_macs(net, trainer.arch) / 1e6, 2),
              "train_seconds": round(seconds, 1), "processes": trainer.ctx.world, **peak_memory()}
    if trainer.ctx.is_main:
        out = trainer.out
        files.save_torch({"arch": trainer.arch, "model": net.state_dict()}, out / "model.pt")
        files.write_text(out / "result.json", json.dumps(result, indent=2) + "\n")
        checkpoint.remove(out / "checkpoint.pt")
        print(f"test top-1 {result['test_top1']:.2f}% (top-5 {result['test_top5']:.2f}%) after the last epoch · "
              f"{result['params_m']:.3f}M params · {result['macs_m']:.1f}M multiply-adds · weights in "
              f"{out / 'model.pt'}", flush=True)
        if cfg.report:
            report.after_run(out)
    return result
