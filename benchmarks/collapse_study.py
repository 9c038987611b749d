"""The collapse study: the search-quality benchmark in each of the five spaces (StacNAS, DARTS first order, DARTS-ES
and random cells, three seeds each, at the `collapse` preset's proxy budget), then one table and one figure.

    python benchmarks/collapse_study.py --out runs/collapse --spaces s3 s2   # runs these spaces, gathers all finished

Each space is `stacnas bench search --preset collapse --space S --out OUT/S`: a finished (method, seed) is never
redone and an interrupted one resumes, so the study can run in pieces. Writes OUT/collapse.md, collapse.json and
collapse.png from every space finished so far.
"""
import argparse
import sys

from stacnas.bench import collapse
from stacnas.cli import main


def run(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="runs/collapse", help="study folder: one benchmark folder per space")
    parser.add_argument("--spaces", nargs="*", default=list(collapse.SPACES), choices=collapse.SPACES,
                        help="spaces to run now (default: all five); none: only gather what is finished")
    parser.add_argument("--preset", default="collapse", help="bench-search preset of every space (default: collapse)")
    args = parser.parse_args(argv)
    for space in args.spaces:
        code = main(["bench", "search", "--preset", args.preset, "--space", space, "--out", f"{args.out}/{space}"])
        if code:
            return code
    return main(["bench", "collapse", "--out", args.out])


if __name__ == "__main__":
    sys.exit(run())
