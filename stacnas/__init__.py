"""stacnas: hierarchical differentiable neural architecture search via operator clustering (StacNAS)."""
from . import genotypes
from .data import DataError, get_loaders
from .genotypes import Genotype
from .network import NetworkCIFAR, NetworkImageNet
from .spaces import BUILTIN_SPACES, PAPER_CLUSTERS, Clusters, SearchSpace, load_space
from .supernet import MixedOp, Supernet

__version__ = "0.1.0"
__all__ = ["BUILTIN_SPACES", "Clusters", "DataError", "Genotype", "MixedOp", "NetworkCIFAR", "NetworkImageNet",
           "PAPER_CLUSTERS", "SearchSpace", "Supernet", "genotypes", "get_loaders", "load_space"]
