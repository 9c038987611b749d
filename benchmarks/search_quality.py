"""The search-quality benchmark: each method (StacNAS, DARTS second and first order, random cells) over several
seeds, each found cell trained with one proxy recipe; prints the table and writes OUT/results.json and .md.

    python benchmarks/search_quality.py --preset cpu --out runs/search-quality-cpu   [stacnas bench search options]

Same as `stacnas bench search`.
"""
import sys

from stacnas.cli import main

if __name__ == "__main__":
    sys.exit(main(["bench", "search", *sys.argv[1:]]))
