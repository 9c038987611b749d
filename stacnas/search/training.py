"""Training one supernet for one stage, resumable: the search steps of stacnas.search.steps run by the shared epoch
loop (stacnas.runtime.epochs), with SGD on the weights (cosine schedule) and Adam on α."""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..names import CELL_TYPES
from ..runtime import distributed, precision
from ..runtime.epochs import EpochLoop
from ..runtime.metrics import MetricsLog, peak_memory
from . import hessian, steps
from .config import SearchConfig
from .early_stop import EarlyStop


@dataclass
class Run:
    """What every stage shares: the configuration (and its hash, which its outputs carry), data, device, process
    group and output folder."""
    cfg: SearchConfig
    config_hash: str
    loaders: object
    device: torch.device
    ctx: distributed.Context
    out: Path
    resume: bool
    order: str
    started: float = field(default_factory=time.time)

    def metrics(self, edge_ops: dict) -> MetricsLog:
        """The run's metrics.jsonl (and TensorBoard), for a supernet with these ops on its edges."""
        return MetricsLog(self.out / "metrics.jsonl", self.ctx.is_main,
                          self.out / "tensorboard" if self.cfg.tensorboard else None, edge_ops)


def _optimizers(model, cfg: SearchConfig, epochs: int):
    w_opt = torch.optim.SGD(model.weights(), cfg.w_lr, momentum=cfg.w_momentum, weight_decay=cfg.w_weight_decay)
    a_opt = torch.optim.Adam(model.alphas(), cfg.a_lr, betas=tuple(cfg.a_betas), weight_decay=cfg.a_weight_decay)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(w_opt, epochs, eta_min=cfg.w_lr_min)
    return w_opt, a_opt, schedule


def _step(run: Run, order: str, model, opts, amp: steps.Precision, x, y, xv, yv, lr):
    """One search step in the configured order; returns (training loss, training logits, the weights' gradient norm,
    validation loss)."""
    w_opt, a_opt, _ = opts
    cfg, ctx = run.cfg, run.ctx
    val_loss = None
    if order == "first":
        val_loss = steps.alpha_step_first_order(model, xv, yv, a_opt, ctx, amp)
    elif order == "second":
        val_loss = steps.alpha_step_second_order(model, x, y, xv, yv, lr, w_opt, a_opt, ctx, amp)
    if order == "one-level":
        result = steps.joint_step(model, x, y, w_opt, a_opt, cfg.grad_clip, ctx, amp)
    else:
        result = steps.weight_step(model, x, y, w_opt, cfg.grad_clip, ctx, amp)
    amp.scaler.update()
    return (*result, val_loss)


class SupernetTraining(EpochLoop):
    """The epochs of one stage; its checkpoint is <out>/<stage>/checkpoint.pt."""

    sums_size = 5  # training-loss sum, correct, seen, validation-loss sum, validation batches

    def __init__(self, run: Run, stage: str, model, epochs: int, order: str):
        self.search_run, self.model, self.order = run, model, order
        self.hessian_set = None  # the Hessian's fixed images, drawn at its first use
        self.opts = _optimizers(model, run.cfg, epochs)
        w_opt, a_opt, schedule = self.opts
        amp = run.cfg.amp
        self.amp = steps.Precision(lambda: precision.autocast(amp, run.device), precision.grad_scaler(amp, run.device))
        stateful = {"model": model, "w_opt": w_opt, "a_opt": a_opt, "schedule": schedule, "scaler": self.amp.scaler}
        self.early_stop = EarlyStop(run.cfg.hessian_interval()) if run.cfg.early_stop else None
        if self.early_stop is not None:
            stateful["early_stop"] = self.early_stop
        super().__init__(stage=stage, checkpoint_path=run.out / stage / "checkpoint.pt", stateful=stateful,
                         ctx=run.ctx, device=run.device, loaders=run.loaders, metrics=run.metrics(model.edge_ops), epochs=epochs,
                         checkpoint_every=run.cfg.checkpoint_every, config_hash=run.config_hash)

    def _hessian_eigenvalue(self) -> float:
        """The largest eigenvalue of ∇²α of α's loss (stacnas.search.hessian): on validation images in bi-level
        search, on training images in one-level; the image set drawn once, seeded by the search's seed."""
        if self.hessian_set is None:
            loader = self.loaders.train if self.order == "one-level" else self.loaders.val
            cfg = self.search_run.cfg
            self.hessian_set = hessian.fixed_batches(loader.dataset, cfg.hessian_batches, cfg.batch_size, cfg.seed,
                                                     self.device)
        return hessian.largest_eigenvalue(self.model, self.hessian_set, self.search_run.cfg.hessian_steps,
                                          self.search_run.cfg.seed)

    def begin_epoch(self, epoch: int) -> None:
        self.model.train()
        self.lr = self.opts[2].get_last_lr()[0]

    def batches(self):
        if self.order == "one-level":
            return ((batch, None) for batch in self.loaders.train)
        return zip(self.loaders.train, self.loaders.val)

    def run_batch(self, batch) -> tuple[list, dict]:
        train_batch, val_batch = batch
        x, y = (t.to(self.device, non_blocking=True) for t in train_batch)
        xv, yv = (t.to(self.device, non_blocking=True) for t in val_batch) if val_batch else (None, None)
        loss, logits, grad_norm, val_loss = _step(self.search_run, self.order, self.model, self.opts, self.amp, x, y,
                                                  xv, yv, self.lr)
        sums = [loss.double() * len(y), (logits.argmax(1) == y).sum(), len(y)]
        finite = {"training loss": loss, "α": torch.cat([a.detach().reshape(-1) for a in self.model.alphas()])}
        if not self.amp.scaler.is_enabled():  # fp16's scaler skips the steps whose gradients overflow: expected
            finite["weights' gradient norm"] = grad_norm
        if val_loss is None:
            return sums, finite
        return sums + [val_loss.double(), 1], {**finite, "validation loss": val_loss}

    def end_epoch(self, epoch: int, total: list[float], started: float) -> tuple[dict, str]:
        self.opts[2].step()
        record = {"stage": self.stage, "epoch": epoch + 1, "epochs": self.epochs, "train_loss": total[0] / total[2],
                  "train_acc": total[1] / total[2], "lr": self.lr, "seconds": round(time.time() - started, 2),
                  **peak_memory(),
                  "alpha_softmax": {t: self.model.edge_weights(t).detach().cpu().tolist() for t in CELL_TYPES}}
        details = f"loss {record['train_loss']:.4f} acc {record['train_acc']:.3f}"
        if self.order != "one-level":
            record["val_loss"] = total[3] / max(total[4], 1.0)
            details += f" val loss {record['val_loss']:.4f}"
        every = self.search_run.cfg.hessian_interval()
        if every and (epoch + 1) % every == 0:
            record["hessian_eigenvalue"] = self._hessian_eigenvalue()
            details += f" Hessian λmax {record['hessian_eigenvalue']:.4g}"
            if self.early_stop is not None and self._stops(record):
                details += f"; DARTS-ES stops here, keeping epoch {record['early_stop_kept_epoch']}'s α"
        return record, f"{details} lr {record['lr']:.4g}"

    def _stops(self, record: dict) -> bool:
        """DARTS-ES after this epoch's evaluation: when it stops, the supernet's α become the kept epoch's (its
        softmax the same; the weights stay the last epoch's) and the record says which epoch that was."""
        kept = self.early_stop.update(record["epoch"], record["hessian_eigenvalue"], record["alpha_softmax"])
        if kept is None:
            return False
        with torch.no_grad():
            for cell_type, alpha in zip(CELL_TYPES, self.model.alphas()):
                softmax = torch.tensor(self.early_stop.alphas[kept][cell_type], dtype=alpha.dtype, device=alpha.device)
                alpha.copy_(torch.where(softmax > 0, softmax.log(), torch.zeros_like(softmax)))  # 0: masked ops
        record["early_stop_kept_epoch"] = kept
        return True

    def stopped(self) -> bool:
        return self.early_stop is not None and self.early_stop.kept is not None


def train_supernet(run: Run, stage: str, model, epochs: int, order: str):
    """Train a supernet for `epochs`, continuing from <out>/<stage>/checkpoint.pt when resuming."""
    SupernetTraining(run, stage, model, epochs, order).run(run.resume)
    return model
