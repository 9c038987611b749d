"""The options of a search (`stacnas search`, `stacnas cluster`), with StacNAS' CIFAR settings as defaults."""
from __future__ import annotations

from dataclasses import dataclass

from ..names import DEFAULT_MEMORY_MODE, KERNEL_CHOICES, MEMORY_MODES, METHODS, ORDERS
from ..runtime.config import option

# options a resumed search may change: they do not change the numbers (beyond float rounding for the kernels)
RESUME_FREE = {"device", "workers", "kernels", "memory_mode", "checkpoint_every"}


@dataclass
class SearchConfig:
    method: str = option("stacnas", "stacnas: clusters, then stage 1 (clusters) and stage 2 (ops); darts: one stage "
                                    "over all ops (the baseline); random: a random cell of the space", "method",
                         choices=list(METHODS))
    space: str = option("darts", "search space: darts, s1, s2, s3, s4 or a YAML/JSON space file", "method")
    clusters: str | None = option(None, "operator clusters: paper (published, DARTS ops), auto (computed), or a JSON "
                                        "file such as a previous clusters.json (default: the space file's own "
                                        "clusters, else paper)", "method", type=str)
    order: str = option("auto", "optimization: one-level, first or second (DARTS bi-level); auto: one-level for "
                                "stacnas, second for darts", "method", choices=list(ORDERS))
    dataset: str = option("digits", "dataset (digits is built in and offline)", "data")
    data_root: str | None = option(None, "folder holding the dataset files", "data", type=str)
    download: bool = option(False, "download the dataset if missing (where a network exists)", "data")
    limit: int = option(0, "use at most this many training images (0: all)", "data")
    val_fraction: float = option(0.5, "share of the training images held out as validation data in bi-level search",
                                 "data")
    seed: int = option(0, "random seed of weights, α, clustering images and data order", "data")
    batch_size: int = option(64, "mini-batch size (per process under torchrun)", "data")
    workers: int = option(0, "data-loading worker processes", "data")
    channels: int = option(16, "initial channels C of the supernet", "supernet")
    nodes: int = option(4, "intermediate nodes per cell", "supernet")
    stage1_layers: int = option(14, "cells in the stage-1 (cluster-level) supernet", "supernet")
    stage2_layers: int = option(20, "cells in the stage-2 supernet (the final depth: complexity match)", "supernet")
    darts_layers: int = option(8, "cells in the DARTS baseline supernet", "supernet")
    epochs: int = option(80, "epochs of each StacNAS stage", "supernet")
    darts_epochs: int = option(50, "epochs of the DARTS baseline", "supernet")
    cluster_layers: int = option(8, "cells of the warm-up supernet of automatic clustering", "clustering")
    cluster_epochs: int = option(10, "warm-up epochs before the op outputs are recorded (automatic clustering)",
                                 "clustering")
    cluster_images: int = option(10000, "training images whose op outputs are recorded (automatic clustering)",
                                 "clustering")
    cluster_threshold: float = option(0.5, "cut the dendrogram at this distance 1 - |corr|", "clustering")
    cluster_count: int = option(0, "cut into this many clusters instead of at the threshold (0: use the threshold)",
                                "clustering")
    cluster_representative: str = option("alpha", "representative of a cluster: alpha (highest mean softmax weight "
                                                  "after warm-up) or first (first listed)", "clustering",
                                         choices=["alpha", "first"])
    w_lr: float = option(0.025, "SGD learning rate of the weights (cosine schedule)", "optimization")
    w_lr_min: float = option(0.001, "final learning rate of the cosine schedule", "optimization")
    w_momentum: float = option(0.9, "SGD momentum", "optimization")
    w_weight_decay: float = option(3e-4, "weight decay of the weights", "optimization")
    grad_clip: float = option(3.0, "clip the weights' gradient norm at this value", "optimization")
    a_lr: float = option(3e-4, "Adam learning rate of α", "optimization")
    a_betas: tuple = option((0.5, 0.999), "Adam betas of α", "optimization")
    a_weight_decay: float = option(1e-3, "weight decay of α", "optimization")
    checkpoint_every: int = option(0, "also checkpoint every this many steps (0: at the end of every epoch only)",
                                   "run")
    device: str = option("auto", "cpu, cuda or auto", "run")
    memory_mode: str = option(DEFAULT_MEMORY_MODE, "supernet memory mode: lean (fused, about half the memory), "
                                                   "recompute (least memory, recomputes in backward) or reference "
                                                   "(plain PyTorch)", "run", choices=list(MEMORY_MODES))
    kernels: str = option("auto", "backend of the fused ops: auto, torch (PyTorch's own ops), cpp, cuda or triton",
                          "run", choices=list(KERNEL_CHOICES))

    def validate(self):
        if self.method not in METHODS:
            raise ValueError(f"method must be one of {', '.join(METHODS)}, got {self.method!r}")
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
