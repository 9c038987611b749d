"""The DARTS supernet (C=16, 8 cells, 32×32, 10 classes) in each memory mode, side by side in one run.

    python benchmarks/supernet.py [--out benchmarks/results/supernet-cpu.json] [stacnas bench options]

Same as `stacnas bench supernet`: prints a table and writes JSON {"config", "machine", "results"}.
"""
import sys

from stacnas.cli import main

if __name__ == "__main__":
    sys.exit(main(["bench", "supernet", *sys.argv[1:]]))
