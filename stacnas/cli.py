"""The `stacnas` command line. Every user error ends in one line on stderr and exit code 2, never a traceback."""
from __future__ import annotations

import argparse
import json
import sys

from . import genotypes
from .data import DataError


class UsageError(ValueError):
    """Bad input from the user; main() prints it as one line and exits with 2."""


class _Parser(argparse.ArgumentParser):
    def error(self, message):
        raise UsageError(f"{message} (see '{self.prog} --help')")


def _cmd_info(args) -> int:
    from . import info

    data = info.collect()
    print(json.dumps(data, indent=2) if args.json else info.render(data))
    return 0


def _cmd_genotype(args) -> int:
    genotype = genotypes.load(args.genotype)
    print(json.dumps(genotypes.to_dict(genotype), indent=2) if args.json else genotypes.to_text(genotype))
    return 0


def _cmd_search(args) -> int:
    from .config import resolve
    from .search import SearchConfig, run_search

    overrides = {name: getattr(args, name) for name in args.config_fields}
    cfg = resolve(SearchConfig, "search", args.preset, args.config, overrides)
    run_search(cfg, args.out, force=args.force)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="stacnas", description="Hierarchical NAS via operator clustering (StacNAS) on fused "
                                                 "mixed-op kernels.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True

    p = sub.add_parser("info", help="versions and which kernel backends this build has (and why not)",
                       description="Print versions and which kernel backends (C++ CPU, CUDA, Triton) work here.")
    p.add_argument("--json", action="store_true", help="print machine-readable JSON instead of text")
    p.set_defaults(func=_cmd_info)

    p = sub.add_parser("genotype", help="print a genotype as DARTS text or JSON",
                       description="Read a genotype (a known name such as DARTS_V2, a .json file, a file with DARTS "
                                   "text, or the text itself) and print it; converts between the formats.")
    p.add_argument("genotype", help=f"known name ({', '.join(genotypes.KNOWN)}), file, or 'Genotype(...)' text")
    p.add_argument("--json", action="store_true", help="print JSON instead of DARTS text")
    p.set_defaults(func=_cmd_genotype)

    from .config import add_arguments, presets
    from .search import SearchConfig

    p = sub.add_parser("search", help="search a cell: StacNAS' two stages, or the DARTS baseline",
                       description="Search a cell on a dataset (digits, built in, by default) and write genotype.json "
                                   "and genotype.txt. Options come from --preset, then --config, then flags.")
    p.add_argument("--preset", choices=presets("search"), default=None,
                   help="hyper-parameter preset: paper (StacNAS' CIFAR settings) or quick (minutes on a CPU)")
    p.add_argument("--config", metavar="YAML", help="YAML file of options (keys as the flags, '-' or '_')")
    p.add_argument("--out", default="runs/search", help="output folder (default: runs/search)")
    p.add_argument("--force", action="store_true", help="write into --out even if it already holds files")
    p.set_defaults(func=_cmd_search, config_fields=add_arguments(p, SearchConfig))
    return parser


def main(argv=None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
        return args.func(args)
    except (UsageError, DataError, ValueError, FileNotFoundError, FileExistsError, NotADirectoryError) as err:
        message = str(err).splitlines()[0] if str(err) else type(err).__name__
        prog = f"stacnas {getattr(args, 'command', '')}".strip() if "args" in locals() else "stacnas"
        print(f"{prog}: error: {message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("stacnas: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
