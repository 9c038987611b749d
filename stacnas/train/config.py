"""The options of a final training (`stacnas train`), with DARTS' CIFAR recipe as defaults."""
from __future__ import annotations

from dataclasses import dataclass

from ..names import AMP_MODES
from ..runtime import tensorboard
from ..runtime.config import SEED_MAX, check, option

# options a resumed training may change: they do not change the numbers
RESUME_FREE = {"device", "workers", "checkpoint_every", "tensorboard", "report", "compile"}


@dataclass
class TrainConfig:
    genotype: str = option("DARTS_V2", "the cell: a known name (DARTS_V2, ...), a search's genotype.json or "
                                       "genotype.txt, or DARTS 'Genotype(...)' text", "network")
    dataset: str = option("digits", "dataset (digits is built in and offline)", "data")
    data_root: str | None = option(None, "folder holding the dataset files", "data", type=str)
    download: bool = option(False, "download the dataset if missing (where a network exists)", "data")
    limit: int = option(0, "use at most this many training and test images (0: all)", "data", at_least=0)
    network: str = option("auto", "cifar (3×3 stem), imagenet (mobile setting: stem reducing ×8) or auto "
                                  "(imagenet for the imagenet dataset)", "network",
                          choices=["auto", "cifar", "imagenet"])
    image_size: int = option(0, "input size for imagenet/folder datasets (0: 224 for imagenet, else 32)", "data",
                             at_least=0)
    layers: int = option(20, "cells", "network", at_least=3)
    channels: int = option(36, "initial channels C", "network", at_least=2)
    epochs: int = option(600, "training epochs", "optimization", at_least=1)
    batch_size: int = option(96, "mini-batch size (per process under torchrun)", "data", at_least=1)
    lr: float = option(0.025, "SGD learning rate", "optimization", above=0.0)
    lr_min: float = option(0.0, "final learning rate of the cosine schedule", "optimization", at_least=0.0)
    lr_schedule: str = option("cosine", "cosine (to lr-min) or exponential (×lr-decay per epoch)", "optimization",
                              choices=["cosine", "exponential"])
    lr_decay: float = option(0.97, "per-epoch factor of the exponential schedule", "optimization", above=0.0)
    scale_lr: bool = option(False, "multiply lr by the number of processes (linear scaling for the global batch)",
                            "optimization")
    momentum: float = option(0.9, "SGD momentum", "optimization", at_least=0.0, below=1.0)
    weight_decay: float = option(3e-4, "weight decay", "optimization", at_least=0.0)
    grad_clip: float = option(5.0, "clip the gradient norm at this value", "optimization", above=0.0)
    cutout: int = option(16, "cutout length (0: none)", "regularization", at_least=0)
    drop_path: float = option(0.2, "drop-path probability reached at the last epoch (ramped linearly from 0)",
                              "regularization", at_least=0.0, below=1.0)
    auxiliary_weight: float = option(0.4, "weight of the auxiliary head's loss (0: no auxiliary head)",
                                     "regularization", at_least=0.0)
    label_smoothing: float = option(0.0, "label smoothing of the cross-entropy", "regularization", at_least=0.0,
                                    below=1.0)
    amp: str = option("none", "mixed precision: none, bf16 or fp16 (fp16 on CUDA only)", "run",
                      choices=list(AMP_MODES))
    channels_last: bool = option(False, "channels-last memory format (faster convolutions on recent GPUs)", "run")
    compile: bool = option(False, "compile the network with torch.compile", "run")
    seed: int = option(0, "random seed of weights, data order and augmentation", "data", at_least=0, at_most=SEED_MAX)
    workers: int = option(0, "data-loading worker processes", "data", at_least=0)
    checkpoint_every: int = option(0, "also checkpoint every this many steps (0: at the end of every epoch only)",
                                   "run", at_least=0)
    tensorboard: bool = option(False, "also log the metrics (and at the end the figures) for TensorBoard in "
                                      "OUT/tensorboard; needs the tensorboard package", "run")
    report: bool = option(True, "write report.html and the figures when the run ends (--no-report: leave that to "
                                "'stacnas report OUT')", "run")
    device: str = option("auto", "cpu, cuda or auto", "run")

    def validate(self):
        check(self)
        if self.tensorboard:
            tensorboard.check_available()
