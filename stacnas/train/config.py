"""The options of a final training (`stacnas train`), with DARTS' CIFAR recipe as defaults."""
from __future__ import annotations

from dataclasses import dataclass

from ..runtime.config import option

# options a resumed training may change: they do not change the numbers
RESUME_FREE = {"device", "workers", "checkpoint_every", "compile"}


@dataclass
class TrainConfig:
    genotype: str = option("DARTS_V2", "the cell: a known name (DARTS_V2, ...), a search's genotype.json or "
                                       "genotype.txt, or DARTS 'Genotype(...)' text", "network")
    dataset: str = option("digits", "dataset (digits is built in and offline)", "data")
    data_root: str | None = option(None, "folder holding the dataset files", "data", type=str)
    download: bool = option(False, "download the dataset if missing (where a network exists)", "data")
    limit: int = option(0, "use at most this many training and test images (0: all)", "data")
    network: str = option("auto", "cifar (3×3 stem), imagenet (mobile setting: stem reducing ×8) or auto "
                                  "(imagenet for the imagenet dataset)", "network",
                          choices=["auto", "cifar", "imagenet"])
    image_size: int = option(0, "input size for imagenet/folder datasets (0: 224 for imagenet, else 32)", "data")
    layers: int = option(20, "cells", "network")
    channels: int = option(36, "initial channels C", "network")
    epochs: int = option(600, "training epochs", "optimization")
    batch_size: int = option(96, "mini-batch size (per process under torchrun)", "data")
    lr: float = option(0.025, "SGD learning rate", "optimization")
    lr_min: float = option(0.0, "final learning rate of the cosine schedule", "optimization")
    lr_schedule: str = option("cosine", "cosine (to lr-min) or exponential (×lr-decay per epoch)", "optimization",
                              choices=["cosine", "exponential"])
    lr_decay: float = option(0.97, "per-epoch factor of the exponential schedule", "optimization")
    scale_lr: bool = option(False, "multiply lr by the number of processes (linear scaling for the global batch)",
                            "optimization")
    momentum: float = option(0.9, "SGD momentum", "optimization")
    weight_decay: float = option(3e-4, "weight decay", "optimization")
    grad_clip: float = option(5.0, "clip the gradient norm at this value", "optimization")
    cutout: int = option(16, "cutout length (0: none)", "regularization")
    drop_path: float = option(0.2, "drop-path probability reached at the last epoch (ramped linearly from 0)",
                              "regularization")
    auxiliary_weight: float = option(0.4, "weight of the auxiliary head's loss (0: no auxiliary head)",
                                     "regularization")
    label_smoothing: float = option(0.0, "label smoothing of the cross-entropy", "regularization")
    amp: str = option("none", "mixed precision: none, bf16 or fp16 (fp16 on CUDA only)", "run",
                      choices=["none", "bf16", "fp16"])
    channels_last: bool = option(False, "channels-last memory format (faster convolutions on recent GPUs)", "run")
    compile: bool = option(False, "compile the network with torch.compile", "run")
    seed: int = option(0, "random seed of weights, data order and augmentation", "data")
    workers: int = option(0, "data-loading worker processes", "data")
    checkpoint_every: int = option(0, "also checkpoint every this many steps (0: at the end of every epoch only)",
                                   "run")
    device: str = option("auto", "cpu, cuda or auto", "run")

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
