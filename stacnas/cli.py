"""The `stacnas` command line. stacnas' own errors end in one line on stderr and their exit code (2: bad input,
3: a diverged run, 4: a file could not be written, 5: out of memory, 130/143: interrupted and checkpointed);
anything else is a bug and ends in a traceback (exit 1)."""
from __future__ import annotations

import argparse
import json
import sys

from . import genotypes
from .errors import StacnasError, UsageError, as_out_of_memory


class _Parser(argparse.ArgumentParser):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, allow_abbrev=False, **kwargs)  # --epoch is not --epochs

    def error(self, message):
        raise UsageError(f"{message} (see '{self.prog} --help')")


def _cmd_info(args) -> int:
    from . import info

    if args.verify:
        records = info.verify()
        print(json.dumps(records, indent=2) if args.json else info.render_verification(records))
        return 0 if all(r["ok"] for r in records) else 1
    data = info.collect()
    print(json.dumps(data, indent=2) if args.json else info.render(data))
    return 0


def _cmd_genotype(args) -> int:
    genotype = genotypes.load(args.genotype)
    print(json.dumps(genotypes.to_dict(genotype), indent=2) if args.json else genotypes.to_text(genotype))
    return 0


def _config(args, cls, command: str):
    """The command's configuration: preset ← --config YAML ← the flags given."""
    from .runtime.config import resolve

    if getattr(args, "resume", False) and args.force:
        raise UsageError("--resume continues the run in --out; --force would start over: give one of them")
    overrides = {name: getattr(args, name) for name in args.config_fields}
    return resolve(cls, command, args.preset, args.config, overrides)


def _cmd_search(args) -> int:
    from .search import SearchConfig, run_search

    run_search(_config(args, SearchConfig, "search"), args.out, force=args.force, resume=args.resume)
    return 0


def _cmd_cluster(args) -> int:
    from .search import SearchConfig, run_clustering

    run_clustering(_config(args, SearchConfig, "search"), args.out, force=args.force)
    return 0


def _cmd_train(args) -> int:
    from .train import TrainConfig, run_train

    run_train(_config(args, TrainConfig, "train"), args.out, force=args.force, resume=args.resume)
    return 0


def _cmd_eval(args) -> int:
    from .train import run_eval

    result = run_eval(args.checkpoint, args.dataset, args.data_root, args.batch_size, args.device, args.limit,
                      args.workers)
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(f"{result['dataset']}: test top-1 {result['test_top1']:.2f}%, top-5 {result['test_top5']:.2f}% "
              f"on {result['images']} images")
    return 0


def _cmd_export(args) -> int:
    from .train import export

    path = export(args.checkpoint, args.out, args.format, args.batch_size)
    print(f"wrote {path} ({args.format})")
    return 0


def _cmd_plot(args) -> int:
    from . import report

    formats = [f.strip() for f in args.format.split(",") if f.strip()]
    if (args.run_dir is None) == (args.genotype is None):
        raise UsageError("give a run folder or --genotype SPEC (one of them)")
    if args.genotype is not None:
        written = report.plot_genotype(args.genotype, args.out or "plots", formats)
    else:
        if args.out is not None:
            raise UsageError("--out is for --genotype; a run's figures go to RUN_DIR/plots")
        written = report.plot(args.run_dir, formats)
    for path in written:
        print(path)
    return 0


def _cmd_report(args) -> int:
    from . import report

    if len(args.run_dirs) == 1 and args.out is None:
        print(report.write_report(args.run_dirs[0]))
    else:
        print(report.write_comparison(args.run_dirs, args.out or "runs/comparison.html", args.force))
    return 0


def _cmd_run(args) -> int:
    """Search, then train the found cell: <out>/search and <out>/train."""
    from pathlib import Path

    from . import report
    from .data import datasets
    from .runtime.config import resolve
    from .runtime.run_dir import check_out_dir
    from .search import SearchConfig, run_search
    from .train import TrainConfig, run_train
    from .train.trainer import network_kind

    shared = {k: getattr(args, k) for k in ("dataset", "data_root", "device", "seed", "limit")}
    search_cfg = resolve(SearchConfig, "search", args.preset, args.search_config, shared)
    train_preset = {"paper": "cifar"}.get(args.preset, args.preset)
    train_cfg = resolve(TrainConfig, "train", train_preset, args.train_config, shared)
    out = check_out_dir(args.out, args.force)
    # the training's data and network are checked now, not after the search
    _, _, info = datasets(train_cfg.dataset, train_cfg.data_root, augment=False, download=train_cfg.download,
                          image_size=train_cfg.image_size or None)
    network_kind(train_cfg, info)
    run_search(search_cfg, str(out / "search"), force=args.force)
    train_cfg.genotype = str(Path(out) / "search" / "genotype.json")
    run_train(train_cfg, str(out / "train"), force=args.force)
    report.after_run(out)
    return 0


def _cmd_bench_supernet(args) -> int:
    from .bench.supernet import BenchConfig, main as bench_main
    from .runtime.config import resolve

    overrides = {name: getattr(args, name) for name in args.config_fields}
    bench_main(resolve(BenchConfig, "bench", None, None, overrides), args.out, args.force)
    return 0


def _cmd_bench_search(args) -> int:
    from .bench.search_quality import QualityConfig, run_benchmark

    run_benchmark(_config(args, QualityConfig, "bench-search"), args.out)
    return 0


def _cmd_bench_collapse(args) -> int:
    from pathlib import Path

    from .bench import collapse

    print(collapse.write(Path(args.out)), end="")
    print(f"table and figure: {args.out}/collapse.md, collapse.png")
    return 0


def _run_options(p, default_out: str) -> None:
    from .runtime.config import presets

    p.add_argument("--preset", choices=presets("search"), default=None,
                   help="hyper-parameter preset: paper (StacNAS' CIFAR settings), darts (the DARTS baseline) or "
                        "quick (minutes on a CPU)")
    p.add_argument("--config", metavar="YAML", help="YAML file of options (keys as the flags, '-' or '_')")
    p.add_argument("--out", default=default_out, help=f"output folder (default: {default_out})")
    p.add_argument("--force", action="store_true", help="write into --out even if it already holds files")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="stacnas", description="Hierarchical NAS via operator clustering (StacNAS) on fused "
                                                 "mixed-op kernels.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True

    p = sub.add_parser("info", help="versions and which kernel backends this build has (and why not)",
                       description="Print versions and which kernel backends (C++ CPU, CUDA, Triton) work here.")
    p.add_argument("--json", action="store_true", help="print machine-readable JSON instead of text")
    p.add_argument("--verify", action="store_true",
                   help="run every backend's self-check (each op against PyTorch's on fixed inputs) and print a "
                        "table; exit status 1 if one fails (the same checks run on a backend's first use)")
    p.set_defaults(func=_cmd_info)

    p = sub.add_parser("genotype", help="print a genotype as DARTS text or JSON",
                       description="Read a genotype (a known name such as DARTS_V2, a .json file, a file with DARTS "
                                   "text, or the text itself) and print it; converts between the formats.")
    p.add_argument("genotype", help=f"known name ({', '.join(genotypes.KNOWN)}), file, or 'Genotype(...)' text")
    p.add_argument("--json", action="store_true", help="print JSON instead of DARTS text")
    p.set_defaults(func=_cmd_genotype)

    from .runtime.config import add_arguments, presets
    from .search import SearchConfig

    p = sub.add_parser("search", help="search a cell: StacNAS' two stages, or the DARTS / random baselines",
                       description="Search a cell on a dataset (digits, built in, by default) and write genotype.json "
                                   "and genotype.txt. Options come from --preset, then --config, then flags.")
    _run_options(p, "runs/search")
    p.add_argument("--resume", action="store_true",
                   help="continue the interrupted search in --out from its last checkpoint (same options)")
    p.set_defaults(func=_cmd_search, config_fields=add_arguments(p, SearchConfig))

    p = sub.add_parser("cluster", help="cluster the operations of a space by the correlation of their outputs",
                       description="Warm up a supernet holding every op of the space, record the ops' outputs on a "
                                   "fixed set of training images, and cluster them (average linkage on 1 - |corr|). "
                                   "Writes clusters.json (usable as 'stacnas search --clusters FILE') and prints "
                                   "the correlation matrix and dendrogram. Takes the options of 'search'.")
    _run_options(p, "runs/cluster")
    p.set_defaults(func=_cmd_cluster, config_fields=add_arguments(p, SearchConfig))

    from .train import EXPORT_FORMATS, TrainConfig

    p = sub.add_parser("train", help="train a cell from scratch and report its test accuracy",
                       description="Train a genotype (a search's genotype.json, DARTS text or a known name) from "
                                   "scratch; writes model.pt, result.json (last-epoch test accuracy, parameters, "
                                   "multiply-adds) and metrics.jsonl. Options come from --preset, --config, flags.")
    p.add_argument("--preset", choices=presets("train"), default=None,
                   help="cifar (DARTS' 600-epoch recipe), imagenet (mobile setting) or quick (minutes on a CPU)")
    p.add_argument("--config", metavar="YAML", help="YAML file of options (keys as the flags, '-' or '_')")
    p.add_argument("--out", default="runs/train", help="output folder (default: runs/train)")
    p.add_argument("--force", action="store_true", help="write into --out even if it already holds files")
    p.add_argument("--resume", action="store_true",
                   help="continue the interrupted training in --out from its last checkpoint (same options)")
    p.set_defaults(func=_cmd_train, config_fields=add_arguments(p, TrainConfig))

    p = sub.add_parser("eval", help="test accuracy of a trained network",
                       description="Evaluate a network saved by 'stacnas train' (model.pt, read with "
                                   "weights_only=True) on a dataset's test split.")
    p.add_argument("--checkpoint", required=True, help="model.pt written by 'stacnas train'")
    p.add_argument("--dataset", default="digits", help="dataset (default: digits)")
    p.add_argument("--data-root", default=None, help="folder holding the dataset files")
    p.add_argument("--batch-size", type=int, default=256, help="batch size (default: 256)")
    p.add_argument("--limit", type=int, default=0, help="evaluate at most this many test images (0: all)")
    p.add_argument("--workers", type=int, default=0, help="data-loading worker processes (default: 0)")
    p.add_argument("--device", default="auto", help="cpu, cuda or auto (default: auto)")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=_cmd_eval)

    p = sub.add_parser("export", help="export a trained network for inference (torch.export, TorchScript, ONNX)",
                       description="Write a network saved by 'stacnas train' as an image -> logits program.")
    p.add_argument("--checkpoint", required=True, help="model.pt written by 'stacnas train'")
    p.add_argument("--format", choices=EXPORT_FORMATS, default="export",
                   help="export: torch.export program (.pt2, torch.export.load); torchscript: traced module "
                        "(torch.jit.load); onnx: needs the onnx and onnxscript packages (default: export)")
    p.add_argument("--batch-size", type=int, default=1, help="batch size of the example input (default: 1)")
    p.add_argument("--out", required=True, help="file to write (never overwritten)")
    p.set_defaults(func=_cmd_export)

    p = sub.add_parser("run", help="the whole pipeline: search a cell, then train it from scratch",
                       description="Run 'stacnas search' into OUT/search, then 'stacnas train' on the found cell into "
                                   "OUT/train. --preset quick uses both quick presets; paper uses search 'paper' and "
                                   "train 'cifar'.")
    p.add_argument("--preset", choices=["quick", "paper"], default="quick", help="quick or paper (default: quick)")
    p.add_argument("--search-config", metavar="YAML", help="YAML options of the search")
    p.add_argument("--train-config", metavar="YAML", help="YAML options of the training")
    p.add_argument("--dataset", default=None, help="dataset of both steps (default: the presets')")
    p.add_argument("--data-root", default=None, help="folder holding the dataset files")
    p.add_argument("--device", default=None, help="cpu, cuda or auto")
    p.add_argument("--seed", type=int, default=None, help="random seed of both steps")
    p.add_argument("--limit", type=int, default=None, help="use at most this many training images (0: all)")
    p.add_argument("--out", default="runs/run", help="output folder (default: runs/run)")
    p.add_argument("--force", action="store_true", help="write into --out even if it already holds files")
    p.set_defaults(func=_cmd_run)

    p = sub.add_parser("plot", help="figures of a run (cells, α over epochs, clustering, curves) or of a genotype",
                       description="Draw a run folder's figures into RUN_DIR/plots: the normal and reduction cells "
                                   "(graphviz where its dot program is installed, else matplotlib), α of every edge "
                                   "over each search stage's epochs, the clustering's correlations and dendrogram, "
                                   "and the curves per epoch. With --genotype, only the cells of that genotype. "
                                   "Needs the plot extra.")
    p.add_argument("run_dir", nargs="?", help="folder written by 'stacnas search', 'cluster', 'train' or 'run'")
    p.add_argument("--genotype", help="draw this genotype instead: known name, file, or 'Genotype(...)' text")
    p.add_argument("--format", default="png", help="png, svg or png,svg (default: png)")
    p.add_argument("--out", default=None, help="folder for --genotype's figures (default: plots)")
    p.set_defaults(func=_cmd_plot)

    p = sub.add_parser("report", help="a self-contained HTML report of a run, or of several runs side by side",
                       description="Write RUN_DIR/report.html (figures embedded; opens offline): configuration, "
                                   "clusters, stage-1 choices, final cells, α trajectories, curves, results, wall "
                                   "time per stage, environment and kernel backends. With several folders, one page "
                                   "comparing them (cells, accuracy, time, memory) in --out. Needs the plot extra.")
    p.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help="run folders")
    p.add_argument("--out", default=None,
                   help="HTML file for several runs (default: runs/comparison.html); never replaced without --force")
    p.add_argument("--force", action="store_true", help="replace --out if it exists")
    p.set_defaults(func=_cmd_report)

    from .bench.search_quality import QualityConfig
    from .bench.supernet import BenchConfig

    p = sub.add_parser("bench", help="benchmarks: the supernet's memory modes, or the search quality of each method",
                       description="stacnas bench supernet: memory modes side by side; stacnas bench search: "
                                   "search and train with each method and seed, and compare the cells found.")
    bench = p.add_subparsers(dest="what", metavar="WHAT", parser_class=_Parser)
    bench.required = True
    q = bench.add_parser("supernet", help="the supernet's memory modes side by side",
                         description="Run the same supernet in each memory mode in one process and report bytes "
                                     "saved for backward per sample, median step time, peak memory, and ratios to "
                                     "reference.")
    q.add_argument("--out", default=None, help="write the JSON report to this file")
    q.add_argument("--force", action="store_true", help="overwrite --out if it exists")
    q.set_defaults(func=_cmd_bench_supernet, config_fields=add_arguments(q, BenchConfig))
    q = bench.add_parser("search", help="does each method find good cells, and the same ones from seed to seed?",
                         description="For each method (stacnas, darts, darts-first, random; darts-es when asked "
                                     "for) and seed: search, then train the found cell with one proxy recipe. Writes "
                                     "OUT/results.json, "
                                     "OUT/results.md (test accuracy mean ± std, parameters, search time and memory, "
                                     "stability across seeds, share of parameter-free ops, op histogram) and "
                                     "OUT/comparison.html; a finished (method, seed) is never redone, so an "
                                     "interrupted benchmark continues when run again with the same options.")
    q.add_argument("--preset", choices=presets("bench-search"), default=None,
                   help="cpu: Fashion-MNIST at a budget of about 1.2 hours on 2 cores; collapse: the collapse "
                        "study's digits proxy of one space (with --space; benchmarks/collapse_study.py runs all "
                        "five); paper: CIFAR-10 at the papers' settings (GPUs; torchrun)")
    q.add_argument("--config", metavar="YAML", help="YAML file of options, including search_options and "
                                                  "train_options (mappings of search / train options)")
    q.add_argument("--out", default="runs/search-quality", help="output folder (default: runs/search-quality)")
    q.set_defaults(func=_cmd_bench_search, config_fields=add_arguments(q, QualityConfig), resume=False,
                   force=False)
    q = bench.add_parser("collapse", help="gather the collapse study's spaces into one table and figure",
                         description="Reads OUT/<space>/results.json of each finished search-quality benchmark "
                                     "(spaces darts, s1-s4; benchmarks/collapse_study.py runs them) and writes "
                                     "OUT/collapse.md, collapse.json and collapse.png (the Hessian eigenvalue over "
                                     "the search's epochs per space and method).")
    q.add_argument("--out", default="runs/collapse", help="study folder (default: runs/collapse)")
    q.set_defaults(func=_cmd_bench_collapse)
    return parser


def _one_line(err: Exception) -> str:
    """The error's message. A data-loading worker's error comes back as "Caught X in DataLoader worker process N"
    and the worker's traceback: its own message is then the traceback's last line."""
    lines = str(err).strip().splitlines() or [type(err).__name__]
    if "Original Traceback" in str(err):
        return lines[-1].split(": ", 1)[-1]
    return lines[0]


def main(argv=None) -> int:
    parser = build_parser()
    args = None
    try:
        args = parser.parse_args(argv)
        return args.func(args)
    except (StacnasError, RuntimeError) as caught:
        err = caught if isinstance(caught, StacnasError) else as_out_of_memory(caught)
        if err is None:
            raise
        prog = f"stacnas {args.command}" if args is not None else "stacnas"
        print(f"{prog}: error: {_one_line(err)}", file=sys.stderr)
        return err.exit_code
    except KeyboardInterrupt:
        print("stacnas: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
