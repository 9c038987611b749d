"""The options of a search (`stacnas search`, `stacnas cluster`), with StacNAS' CIFAR settings as defaults."""
from __future__ import annotations

from dataclasses import dataclass

from ..errors import UsageError
from ..names import AMP_MODES, CLUSTER_STATISTICS, DEFAULT_MEMORY_MODE, KERNEL_CHOICES, MEMORY_MODES, METHODS, ORDERS
from ..runtime import tensorboard
from ..runtime.config import SEED_MAX, check, option

# options a resumed search may change: they do not change the numbers (beyond float rounding for the kernels)
RESUME_FREE = {"device", "workers", "kernels", "memory_mode", "checkpoint_every", "tensorboard", "report"}


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
    limit: int = option(0, "use at most this many training images (0: all)", "data", at_least=0)
    val_fraction: float = option(0.5, "share of the training images held out as validation data in bi-level search",
                                 "data", at_least=0.0, below=1.0)
    seed: int = option(0, "random seed of weights, α, clustering images and data order", "data", at_least=0,
                       at_most=SEED_MAX)
    batch_size: int = option(64, "mini-batch size (per process under torchrun)", "data", at_least=1)
    workers: int = option(0, "data-loading worker processes", "data", at_least=0)
    channels: int = option(16, "initial channels C of the supernet", "supernet", at_least=1)
    nodes: int = option(4, "intermediate nodes per cell", "supernet", at_least=1)
    stage1_layers: int = option(14, "cells in the stage-1 (cluster-level) supernet", "supernet", at_least=3)
    stage2_layers: int = option(20, "cells in the stage-2 supernet (the final depth: complexity match)", "supernet",
                                at_least=3)
    darts_layers: int = option(8, "cells in the DARTS baseline supernet", "supernet", at_least=3)
    epochs: int = option(80, "epochs of each StacNAS stage", "supernet", at_least=1)
    darts_epochs: int = option(50, "epochs of the DARTS baseline", "supernet", at_least=1)
    cluster_layers: int = option(8, "cells of the warm-up supernet of automatic clustering", "clustering", at_least=3)
    cluster_epochs: int = option(10, "warm-up epochs before the op outputs are recorded (automatic clustering)",
                                 "clustering", at_least=0)
    cluster_images: int = option(10000, "training images whose op outputs are recorded (automatic clustering)",
                                 "clustering", at_least=1)
    cluster_threshold: float = option(0.25, "cut the dendrogram at this distance 1 - |corr| (0.25: chosen from "
                                            "benchmarks/clustering_similarity.py, see docs/spaces.md)", "clustering",
                                      at_least=0.0, at_most=1.0)
    cluster_count: int = option(0, "cut into this many clusters instead of at the threshold (0: use the threshold)",
                                "clustering", at_least=0)
    cluster_statistic: str = option("element", "similarity of op outputs: element (correlation, every output "
                                               "element an observation), sample (correlation as StacNAS' reference: "
                                               "an observation per image, a mean per feature position), cka "
                                               "(linear CKA over channels) or gradient (correlation of the ops' "
                                               "α-gradients across mini-batches: how they compete)", "clustering",
                                    choices=list(CLUSTER_STATISTICS))
    cluster_before_bn: bool = option(False, "compare the op outputs before their trailing BatchNorm", "clustering")
    cluster_representative: str = option("alpha", "representative of a cluster: alpha (highest mean softmax weight "
                                                  "after warm-up) or first (first listed)", "clustering",
                                         choices=["alpha", "first"])
    w_lr: float = option(0.025, "SGD learning rate of the weights (cosine schedule)", "optimization", above=0.0)
    w_lr_min: float = option(0.001, "final learning rate of the cosine schedule", "optimization", at_least=0.0)
    w_momentum: float = option(0.9, "SGD momentum", "optimization", at_least=0.0, below=1.0)
    w_weight_decay: float = option(3e-4, "weight decay of the weights", "optimization", at_least=0.0)
    grad_clip: float = option(3.0, "clip the weights' gradient norm at this value", "optimization", above=0.0)
    a_lr: float = option(3e-4, "Adam learning rate of α", "optimization", above=0.0)
    a_betas: tuple = option((0.5, 0.999), "Adam betas of α", "optimization", at_least=0.0, below=1.0)
    a_weight_decay: float = option(1e-3, "weight decay of α", "optimization", at_least=0.0)
    hessian_every: int = option(0, "every this many epochs, log the largest eigenvalue of the Hessian of α's loss "
                                   "w.r.t. α (RobustDARTS' collapse indicator; 0: never); see docs/search.md",
                                "analysis", at_least=0)
    hessian_batches: int = option(2, "batches of the fixed, seeded image set the Hessian is computed on", "analysis",
                                  at_least=1)
    hessian_steps: int = option(20, "Lanczos steps (each a double backward over those batches) per eigenvalue",
                                "analysis", at_least=1)
    early_stop: bool = option(False, "DARTS-ES (RobustDARTS): stop a stage once the eigenvalue's local average "
                                     "grew by 1.3x over 4 evaluations (not before epoch 10) and keep the α of the "
                                     "epoch before the growth; evaluates every epoch unless --hessian-every says "
                                     "otherwise", "analysis")
    checkpoint_every: int = option(0, "also checkpoint every this many steps (0: at the end of every epoch only)",
                                   "run", at_least=0)
    tensorboard: bool = option(False, "also log the metrics (and at the end the figures) for TensorBoard in "
                                      "OUT/tensorboard; needs the tensorboard package", "run")
    report: bool = option(True, "write report.html and the figures when the run ends (--no-report: leave that to "
                                "'stacnas report OUT')", "run")
    device: str = option("auto", "cpu, cuda or auto", "run")
    memory_mode: str = option(DEFAULT_MEMORY_MODE, "supernet memory mode: lean (fused, about half the memory), "
                                                   "recompute (least memory, recomputes in backward) or reference "
                                                   "(plain PyTorch)", "run", choices=list(MEMORY_MODES))
    kernels: str = option("auto", "backend of the fused ops: auto, torch (PyTorch's own ops), cpp, cuda or triton",
                          "run", choices=list(KERNEL_CHOICES))
    amp: str = option("none", "mixed precision: none, bf16 or fp16 (autocast; fp16 on CUDA only, with a gradient "
                              "scaler, and not with second-order search)", "run", choices=list(AMP_MODES))

    def validate(self):
        check(self)
        if self.tensorboard:
            tensorboard.check_available()
        if self.resolved_order() != "one-level" and self.val_fraction == 0:
            raise UsageError("val-fraction must be above 0 for bi-level search (first or second order), got 0")
        if self.cluster_statistic == "gradient" and self.cluster_before_bn:
            raise UsageError("--cluster-before-bn does not apply to --cluster-statistic gradient (an op's α-gradient "
                             "is taken on its output); leave one of them out")
        if self.amp == "fp16" and self.resolved_order() == "second":
            raise UsageError("--amp fp16 does not combine with second-order search (its finite-difference Hessian-vector "
                             "product is not gradient-scaled); use --amp bf16 or --order first")

    def hessian_interval(self) -> int:
        """Every how many epochs the Hessian eigenvalue is evaluated (0: never)."""
        return self.hessian_every or (1 if self.early_stop else 0)

    def resolved_order(self) -> str:
        if self.order != "auto":
            return self.order
        return "second" if self.method == "darts" else "one-level"
