"""The resumable epoch loop that search stages and final training share.

A subclass says what one batch does (`run_batch`: the sums to accumulate and the values that must stay finite) and
what an epoch reports (`end_epoch`: its metrics record); the loop does the rest the same way for both: it rebuilds the
data order of each epoch (skipping the batches a mid-epoch resume has done), keeps the sums on the device, draws the
progress bar, checkpoints every `checkpoint_every` steps and after every epoch, logs each epoch before its
checkpoint (a resume trims what no checkpoint covers), restores all of it on resume, stops at the first non-finite
loss, gradient or α (DivergedError, the last good checkpoint kept), and on SIGINT or SIGTERM checkpoints the step it
stands at and stops (Interrupted).
"""
from __future__ import annotations

import contextlib
import signal
import threading
import time
from pathlib import Path

import torch

from .. import files
from ..errors import DivergedError, Interrupted
from . import checkpoint, distributed
from .metrics import MetricsLog
from .progress import Progress

_SIGNALS = {signal.SIGINT: ("interrupted (SIGINT)", 130), signal.SIGTERM: ("terminated (SIGTERM)", 143)}


@contextlib.contextmanager
def _stop_requests():
    """While the loop runs, SIGINT and SIGTERM only ask it to stop after the current step (a second SIGINT stops at
    once). Yields a list that holds the signals received."""
    received, previous = [], {}
    if threading.current_thread() is not threading.main_thread():
        yield received
        return

    def handler(signum, frame):
        if signum == signal.SIGINT and received:
            raise KeyboardInterrupt
        received.append(signum)

    for signum in _SIGNALS:
        previous[signum] = signal.signal(signum, handler)
    try:
        yield received
    finally:
        for signum, old in previous.items():
            signal.signal(signum, old)


class EpochLoop:
    """stateful: the objects a checkpoint holds (name → anything with state_dict/load_state_dict), besides the RNG
    states, the epoch, the step and the sums of the epoch so far. config_hash: the run's configuration, which a
    checkpoint must carry to be resumed from."""

    sums_size: int  # how many sums run_batch returns

    def __init__(self, *, stage: str | None, checkpoint_path: Path, stateful: dict, ctx: distributed.Context,
                 device: torch.device, loaders, metrics: MetricsLog, epochs: int, checkpoint_every: int,
                 config_hash: str):
        self.stage, self.checkpoint_path, self.stateful = stage, Path(checkpoint_path), stateful
        self.ctx, self.device, self.loaders, self.metrics = ctx, device, loaders, metrics
        self.epochs, self.checkpoint_every, self.config_hash = epochs, checkpoint_every, config_hash
        self.prefix = f"[{stage}] " if stage else ""

    # ---- what a subclass says ----
    def begin_epoch(self, epoch: int) -> None:
        """Before the epoch's first batch (the model's mode, the epoch's schedule values)."""

    def batches(self):
        """The batches of one epoch (the training loader's; run_batch receives them one by one)."""
        return self.loaders.train

    def run_batch(self, batch) -> tuple[list, dict]:
        """Train on one batch: (the values to add to the epoch's sums, tensors or numbers; {name: tensor} of what
        must be finite, e.g. the loss and the gradient norm)."""
        raise NotImplementedError

    def end_epoch(self, epoch: int, sums: list[float], started: float) -> tuple[dict, str]:
        """(the epoch's metrics record, its log line's details), from the sums over all ranks; `started`: the epoch's
        time.time() at its start."""
        raise NotImplementedError

    def stopped(self) -> bool:
        """Whether the loop ends before its last epoch (an early stop; decided in end_epoch, from checkpointed state
        so that a resumed run ends where the uninterrupted one did)."""
        return False

    # ---- the loop ----
    def run(self, resume: bool) -> dict | None:
        """The epochs left (all, or from the checkpoint when resuming). Returns the last epoch's record."""
        epoch, step, sums = self.restore() if resume else (0, 0, None)
        if resume:
            self.metrics.trim(self.stage, epoch)
        record = None
        with _stop_requests() as stop:
            while epoch < self.epochs and not self.stopped():
                started = time.time()
                self.begin_epoch(epoch)
                total = self._batches(epoch, step, sums, stop)
                record, details = self.end_epoch(epoch, total, started)
                self.metrics.log(record, details)  # before the checkpoint: a resume trims what no checkpoint covers
                epoch, step, sums = epoch + 1, 0, None
                self.save(epoch, 0)
        return record

    def _batches(self, epoch: int, step: int, sums: list | None, stop: list) -> list[float]:
        self.loaders.set_epoch(epoch, skip_batches=step)
        sums = torch.tensor(sums or [0.0] * self.sums_size, dtype=torch.float64, device=self.device)
        n_batches = len(self.loaders.train)
        bar = Progress(n_batches, f"{self.prefix}epoch {epoch + 1}/{self.epochs}", enabled=self.ctx.is_main)
        bar.update(step)
        for batch in self.batches():
            values, finite = self.run_batch(batch)
            self._check_finite(finite, epoch, step + 1)
            for i, value in enumerate(values):
                sums[i] += value
            step += 1
            bar.update()
            if self._stop_requested(stop):
                bar.close()
                self.save(epoch, step, distributed.sum_over_ranks(sums, self.ctx).tolist())
                message, code = _SIGNALS[stop[0]] if stop else ("stopped by another process", 143)
                raise Interrupted(f"{self.prefix}{message} at epoch {epoch + 1}, step {step}; checkpointed: "
                                  "--resume continues", code)
            if self.checkpoint_every and step % self.checkpoint_every == 0 and step < n_batches:
                self.save(epoch, step, distributed.sum_over_ranks(sums, self.ctx).tolist())
        bar.close()
        return distributed.sum_over_ranks(sums, self.ctx).tolist()

    def _stop_requested(self, stop: list) -> bool:
        """Whether any rank received SIGINT or SIGTERM (ranks agree, so they checkpoint the same step)."""
        if not self.ctx.active:
            return bool(stop)
        flag = torch.tensor([float(bool(stop))], device=self.device)
        return bool(distributed.sum_over_ranks(flag, self.ctx).item())

    def _check_finite(self, finite: dict, epoch: int, step: int) -> None:
        """One sync per step: the first of `finite`'s tensors holding a NaN or an infinity stops the run."""
        flags = torch.stack([torch.isfinite(t.detach()).all() for t in finite.values()]).tolist()
        for name, ok in zip(finite, flags):
            if not ok:
                raise DivergedError(f"{self.prefix}epoch {epoch + 1}, step {step}: the {name} is not finite; the run "
                                    "stopped with its last good checkpoint kept (lower the learning rate and start "
                                    "again)")

    def save(self, epoch: int, step: int, sums: list | None = None) -> None:
        """A checkpoint at `step` batches into `epoch` (rank 0 writes; the sums are over all ranks)."""
        if not self.ctx.is_main:
            return
        state = {name: obj.state_dict() for name, obj in self.stateful.items()}
        state.update(rng=checkpoint.rng_state(), epoch=epoch, step=step, totals=sums)
        files.make_folder(self.checkpoint_path.parent)
        checkpoint.save(state, self.checkpoint_path, self.config_hash)

    def restore(self) -> tuple[int, int, list | None]:
        """(epoch, step, sums) of the newest intact checkpoint of this configuration, its state loaded; (0, 0, None)
        when there is none."""
        state = checkpoint.restore(self.checkpoint_path, self.device, self.config_hash)
        if state is None:
            return 0, 0, None
        for name, obj in self.stateful.items():
            obj.load_state_dict(state[name])
        checkpoint.set_rng_state(state["rng"])
        epoch, step = state["epoch"], state["step"]
        if self.ctx.is_main:
            print(f"{self.prefix}resuming at epoch {epoch + 1}, step {step}", flush=True)
        # the saved sums are over all ranks: rank 0 carries them, the others start from zero
        return epoch, step, state["totals"] if self.ctx.is_main else None
