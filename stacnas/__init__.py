"""stacnas: hierarchical differentiable neural architecture search via operator clustering (StacNAS).

Layers, each importing only from those before it (docs/ARCHITECTURE.md):
    names                         the names of every choice
    fused (+ kernels)             the fused ops and their backends
    data · ops · spaces · genotypes   what is searched, and on what
    nn                            supernets and their memory modes
    info · runtime                the installation; what every run stands on
    search · train                architecture search; final training
    bench · cli                   the supernet benchmark; the command line
"""
from . import genotypes
from .data import DataError, get_loaders
from .genotypes import Genotype
from .nn import MixedOp, Supernet
from .search import SearchConfig, run_clustering, run_search
from .spaces import BUILTIN_SPACES, PAPER_CLUSTERS, Clusters, SearchSpace, load_space
from .train import NetworkCIFAR, NetworkImageNet, TrainConfig, run_eval, run_train

__version__ = "0.1.0"
__all__ = ["BUILTIN_SPACES", "Clusters", "DataError", "Genotype", "MixedOp", "NetworkCIFAR", "NetworkImageNet",
           "PAPER_CLUSTERS", "SearchConfig", "SearchSpace", "Supernet", "TrainConfig", "genotypes", "get_loaders",
           "load_space", "run_clustering", "run_eval", "run_search", "run_train"]
