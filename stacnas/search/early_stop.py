"""DARTS-ES (Zela et al., ICLR 2020, "Understanding and Robustifying DARTS", section 4.2): stop a search once the
dominant eigenvalue of the Hessian of α's loss w.r.t. α has grown too fast, and keep the architecture of an epoch
before the growth. The rule is RobustDARTS' (its `EVLocalAvg`), with its defaults:

  - the eigenvalue λ is evaluated every `every` epochs (--hessian-every; 1 when only --early-stop is given);
  - its local average after n evaluations is the mean of the last WINDOW ones (of all n while n < WINDOW), from the
    ceil(WINDOW/2)-th evaluation on; it stands for the epoch WINDOW//2 evaluations back (the window's centre);
  - the search stops when the latest local average exceeds FACTOR × the one DELTA averages earlier, unless the
    epoch that earlier average stands for is before START_EPOCH; the architecture kept is that epoch's.

Epochs are counted from 1 as in metrics.jsonl. The rule is checked at every evaluation, the last epoch's included.
"""
from __future__ import annotations

import math

WINDOW, FACTOR, START_EPOCH, DELTA = 5, 1.3, 10, 4


def local_averages(values: list[float], window: int = WINDOW) -> list[float]:
    """The local average after each evaluation, from the ceil(window/2)-th on."""
    return [sum(values[max(0, n - window):n]) / min(n, window)
            for n in range(math.ceil(window / 2), len(values) + 1)]


def kept_epoch(evaluations: list[tuple[int, float]], every: int) -> int | None:
    """The epoch whose architecture DARTS-ES keeps if the latest of `evaluations` ((epoch, eigenvalue), one every
    `every` epochs, in order) stops the search; None while it goes on."""
    averages = local_averages([value for _, value in evaluations])
    if len(averages) <= DELTA:
        return None
    earlier = evaluations[-1][0] - every * (WINDOW // 2) - every * DELTA
    if earlier < START_EPOCH or averages[-1] <= FACTOR * averages[-1 - DELTA]:
        return None
    return earlier


class EarlyStop:
    """DARTS-ES during one stage: the evaluations so far with the α (softmax, per cell type) of their epochs, and the
    epoch kept once it stopped. Part of the stage's checkpoint, so a resumed search decides as the uninterrupted one."""

    def __init__(self, every: int):
        self.every = every
        self.evaluations: list[tuple[int, float]] = []
        self.alphas: dict[int, dict] = {}
        self.kept: int | None = None

    def update(self, epoch: int, eigenvalue: float, alphas: dict) -> int | None:
        """Add an evaluation; the epoch kept if the search stops now, else None."""
        self.evaluations.append((epoch, eigenvalue))
        self.alphas[epoch] = alphas
        self.kept = kept_epoch(self.evaluations, self.every)
        return self.kept

    def state_dict(self) -> dict:
        return {"every": self.every, "evaluations": [list(e) for e in self.evaluations],
                "alphas": {str(epoch): a for epoch, a in self.alphas.items()}, "kept": self.kept}

    def load_state_dict(self, state: dict) -> None:
        self.every, self.kept = state["every"], state["kept"]
        self.evaluations = [(int(epoch), float(value)) for epoch, value in state["evaluations"]]
        self.alphas = {int(epoch): a for epoch, a in state["alphas"].items()}
