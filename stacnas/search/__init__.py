"""Architecture search on top of stacnas.nn:

    config      SearchConfig, the options of a search
    run         a whole search: StacNAS' clustering and two stages, the DARTS baseline, a random cell
    stages      what each stage searches: the stage spaces, stage 1's choice, where clusters come from
    training    one supernet trained for one stage on the shared epoch loop
    steps       one search step in each optimization order (one-level, DARTS first and second order)
    clustering  operator clustering by the correlation of the ops' outputs
"""
from .config import SearchConfig
from .run import SearchResult, run_clustering, run_search

__all__ = ["SearchConfig", "SearchResult", "run_clustering", "run_search"]
