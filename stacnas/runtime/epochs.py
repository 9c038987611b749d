"""The resumable epoch loop that search stages and final training share.

A subclass says what one batch does (`run_batch`, returning the sums to accumulate) and what an epoch reports
(`end_epoch`, returning its metrics record); the loop does the rest the same way for both: it rebuilds the data
order of each epoch (skipping the batches a mid-epoch resume has done), keeps the sums on the device (no sync per
step), draws the progress bar, checkpoints every `checkpoint_every` steps and after every epoch, logs each epoch
before its checkpoint (a resume trims what no checkpoint covers), and restores all of it on resume.
"""
from __future__ import annotations

import time
from pathlib import Path

import torch

from . import checkpoint, distributed
from .metrics import MetricsLog
from .progress import Progress


class EpochLoop:
    """stateful: the objects a checkpoint holds (name → anything with state_dict/load_state_dict), besides the RNG
    states, the epoch, the step and the sums of the epoch so far."""

    sums_size: int  # how many values run_batch returns

    def __init__(self, *, stage: str | None, checkpoint_path: Path, stateful: dict, ctx: distributed.Context,
                 device: torch.device, loaders, metrics: MetricsLog, epochs: int, checkpoint_every: int):
        self.stage, self.checkpoint_path, self.stateful = stage, Path(checkpoint_path), stateful
        self.ctx, self.device, self.loaders, self.metrics = ctx, device, loaders, metrics
        self.epochs, self.checkpoint_every = epochs, checkpoint_every

    # ---- what a subclass says ----
    def begin_epoch(self, epoch: int) -> None:
        """Before the epoch's first batch (the model's mode, the epoch's schedule values)."""

    def batches(self):
        """The batches of one epoch (the training loader's; run_batch receives them one by one)."""
        return self.loaders.train

    def run_batch(self, batch) -> list:
        """Train on one batch; the values to add to the epoch's sums (tensors on the device or numbers)."""
        raise NotImplementedError

    def end_epoch(self, epoch: int, sums: list[float], started: float) -> tuple[dict, str]:
        """(the epoch's metrics record, its log line's details), from the sums over all ranks; `started`: the epoch's
        time.time() at its start."""
        raise NotImplementedError

    # ---- the loop ----
    def run(self, resume: bool) -> dict | None:
        """The epochs left (all, or from the checkpoint when resuming). Returns the last epoch's record."""
        epoch, step, sums = self.restore() if resume and self.checkpoint_path.is_file() else (0, 0, None)
        if resume:
            self.metrics.trim(self.stage, epoch)
        record = None
        while epoch < self.epochs:
            started = time.time()
            self.begin_epoch(epoch)
            total = self._batches(epoch, step, sums)
            record, details = self.end_epoch(epoch, total, started)
            self.metrics.log(record, details)  # before the checkpoint: a resume trims what no checkpoint covers
            epoch, step, sums = epoch + 1, 0, None
            self.save(epoch, 0)
        return record

    def _batches(self, epoch: int, step: int, sums: list | None) -> list[float]:
        self.loaders.set_epoch(epoch, skip_batches=step)
        sums = torch.tensor(sums or [0.0] * self.sums_size, dtype=torch.float64, device=self.device)
        n_batches = len(self.loaders.train)
        prefix = f"[{self.stage}] " if self.stage else ""
        bar = Progress(n_batches, f"{prefix}epoch {epoch + 1}/{self.epochs}", enabled=self.ctx.is_main)
        bar.update(step)
        for batch in self.batches():
            for i, value in enumerate(self.run_batch(batch)):
                sums[i] += value
            step += 1
            bar.update()
            if self.checkpoint_every and step % self.checkpoint_every == 0 and step < n_batches:
                self.save(epoch, step, distributed.sum_over_ranks(sums, self.ctx).tolist())
        bar.close()
        return distributed.sum_over_ranks(sums, self.ctx).tolist()

    def save(self, epoch: int, step: int, sums: list | None = None) -> None:
        """A checkpoint at `step` batches into `epoch` (rank 0 writes; the sums are over all ranks)."""
        if not self.ctx.is_main:
            return
        state = {name: obj.state_dict() for name, obj in self.stateful.items()}
        state.update(rng=checkpoint.rng_state(), epoch=epoch, step=step, totals=sums)
        self.checkpoint_path.parent.mkdir(parents=True, exist_ok=True)
        checkpoint.save(state, self.checkpoint_path)

    def restore(self) -> tuple[int, int, list | None]:
        """(epoch, step, sums) of the checkpoint, its state loaded."""
        state = checkpoint.load(self.checkpoint_path, map_location=self.device)
        for name, obj in self.stateful.items():
            obj.load_state_dict(state[name])
        checkpoint.set_rng_state(state["rng"])
        epoch, step = state["epoch"], state["step"]
        if self.ctx.is_main:
            prefix = f"[{self.stage}] " if self.stage else ""
            print(f"{prefix}resuming at epoch {epoch + 1}, step {step}", flush=True)
        # the saved sums are over all ranks: rank 0 carries them, the others start from zero
        return epoch, step, state["totals"] if self.ctx.is_main else None
