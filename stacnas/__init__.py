"""stacnas: hierarchical differentiable neural architecture search via operator clustering (StacNAS)."""
from . import genotypes
from .data import DataError, get_loaders
from .genotypes import Genotype
from .network import NetworkCIFAR, NetworkImageNet
from .search import SearchConfig, run_clustering, run_search
from .spaces import BUILTIN_SPACES, PAPER_CLUSTERS, Clusters, SearchSpace, load_space
from .supernet import MixedOp, Supernet
from .train import TrainConfig, run_eval, run_train

__version__ = "0.1.0"
__all__ = ["BUILTIN_SPACES", "Clusters", "DataError", "Genotype", "MixedOp", "NetworkCIFAR", "NetworkImageNet",
           "PAPER_CLUSTERS", "SearchConfig", "SearchSpace", "Supernet", "TrainConfig", "genotypes", "get_loaders",
           "load_space", "run_clustering", "run_eval", "run_search", "run_train"]
