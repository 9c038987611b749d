"""The benchmarks `stacnas bench` runs: the supernet's memory modes side by side (supernet.py) and the search
quality of each method (search_quality.py)."""
