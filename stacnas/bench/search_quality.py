"""The search-quality benchmark (`stacnas bench search`, benchmarks/search_quality.py): does a method find good
cells, and the same ones from seed to seed?

For each method (StacNAS, DARTS second and first order, DARTS-ES when asked for, a random cell) and seed: search,
then train the found cell from scratch with one fixed proxy recipe, on the same dataset and split. Per method: the
trained cells' test accuracy (last epoch; mean ± std over seeds), parameters, search time and peak memory,
stability (the mean over seed pairs of the share of identical (op, input) pairs of the two cells), the share of
parameter-free ops in the found cells (DARTS' collapse indicator) with the op histogram, and, where the searches log
it (--hessian-every, DARTS-ES), the Hessian eigenvalue's trajectory and its last value (RobustDARTS' indicator).
Every (method, seed) is a pipeline folder OUT/<method>/seed<k>/{search,train} (`stacnas report` reads it), each run
in a process of its own (its peak memory is its own); a finished pair is never redone, an interrupted one resumes
from its checkpoints.
"""
from __future__ import annotations

import dataclasses
import itertools
import json
import signal
import statistics
import subprocess
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from .. import files, genotypes, report
from ..errors import StacnasError, UsageError
from ..names import CELL_TYPES
from ..ops import OPS, short_name
from ..runtime import distributed
from ..runtime.config import SEED_MAX, check, option, resolve
from ..search import SearchConfig
from ..train import TrainConfig

# a benchmark method -> the search options that make it
METHODS = {"stacnas": {"method": "stacnas", "order": "auto"}, "darts": {"method": "darts", "order": "second"},
           "darts-first": {"method": "darts", "order": "first"},
           "darts-es": {"method": "darts", "order": "first", "early_stop": True}, "random": {"method": "random"}}
# DARTS-ES evaluates the Hessian eigenvalue every epoch (or every --hessian-every): compared when asked for
DEFAULT_METHODS = ("stacnas", "darts", "darts-first", "random")
PARAMETER_FREE = {"none", "noise", "max_pool_3x3", "avg_pool_3x3", "skip_connect"}
# options that do not change a pair's results: a resumed benchmark may change them
FREE = {"methods", "seeds", "device", "workers", "first_seed"}


@dataclass
class QualityConfig:
    methods: tuple = option(DEFAULT_METHODS, "methods to compare (darts-es: DARTS first order with --early-stop)",
                            "benchmark", choices=list(METHODS), nargs="+")
    seeds: int = option(3, "independent search-and-train runs per method (seeds first-seed, first-seed + 1, ...)",
                        "benchmark", at_least=1)
    first_seed: int = option(0, "the first seed", "benchmark", at_least=0, at_most=SEED_MAX)
    space: str = option("darts", "search space of every search: darts, s1, s2, s3, s4 or a space file", "recipe")
    dataset: str = option("fashion-mnist", "dataset of every search and training", "data")
    data_root: str | None = option(None, "folder holding the dataset files", "data", type=str)
    download: bool = option(False, "download the dataset if missing (where a network exists)", "data")
    stacnas_preset: str = option("quick", "search preset of StacNAS' searches", "recipe")
    darts_preset: str = option("quick", "search preset of the DARTS searches", "recipe")
    train_preset: str = option("quick", "training preset of the proxy recipe every found cell is trained with",
                               "recipe")
    search_options: dict | None = option(None, "options of every search over its preset (YAML mapping; in --config "
                                               "only)", "recipe", type=dict, flag=False)
    train_options: dict | None = option(None, "options of every training over its preset (YAML mapping; in "
                                              "--config only)", "recipe", type=dict, flag=False)
    device: str = option("auto", "cpu, cuda or auto", "run")
    workers: int = option(0, "data-loading worker processes", "run", at_least=0)

    def validate(self):
        check(self)
        for what, options in (("search-options", self.search_options), ("train-options", self.train_options)):
            if options is not None and any(not isinstance(k, str) for k in options):
                raise UsageError(f"{what} must map option names to values")
        if "space" in (self.search_options or {}):
            raise UsageError("give the search space as the benchmark's space (--space), not in search-options")

    def shared(self) -> dict:
        return {"dataset": self.dataset, "data_root": self.data_root, "download": self.download,
                "device": self.device, "workers": self.workers}

    def search_config(self, method: str, seed: int) -> SearchConfig:
        preset = {"stacnas": self.stacnas_preset, "random": None}.get(method, self.darts_preset)
        return resolve(SearchConfig, "search", preset, None,
                       {**(self.search_options or {}), **self.shared(), **METHODS[method], "space": self.space,
                        "seed": seed})

    def train_config(self, genotype: Path, seed: int) -> TrainConfig:
        return resolve(TrainConfig, "train", self.train_preset, None,
                       {**(self.train_options or {}), **self.shared(), "genotype": str(genotype), "seed": seed})


def _check_out(cfg: QualityConfig, out: Path) -> None:
    """OUT/benchmark.json holds the configuration; a benchmark continued in OUT must give the same recipe."""
    saved_path = out / "benchmark.json"
    current = json.loads(json.dumps(dataclasses.asdict(cfg)))
    if saved_path.is_file():
        saved = json.loads(files.read_text(saved_path, "benchmark configuration"))
        defaults = json.loads(json.dumps(dataclasses.asdict(QualityConfig())))  # for options added since it was saved
        changed = [k for k, v in current.items() if k not in FREE and saved.get(k, defaults[k]) != v]
        if changed:
            raise UsageError(f"{out} holds a benchmark with other options ({', '.join(changed)}); give the same "
                             "options to continue it, or another --out")
    elif out.exists() and any(out.iterdir()):
        raise UsageError(f"{out} already holds files that are not a search-quality benchmark; give another --out")
    files.make_folder(out)
    files.write_text(saved_path, json.dumps(current, indent=2) + "\n")


class RunFailed(StacnasError):
    """A search or training of the benchmark ended with an error (it printed it); its exit status is passed on."""

    def __init__(self, message: str, exit_code: int):
        super().__init__(message)
        self.exit_code = exit_code


def _run_in_process(command: str, cfg, out: Path, resume: bool) -> None:
    """`stacnas <command>` with the configuration `cfg`, in a process of its own: its peak memory is its own, and it
    checkpoints and stops on Ctrl-C as it would alone."""
    options = json.dumps(dataclasses.asdict(cfg))  # JSON is YAML: read as --config from the child's stdin
    process = subprocess.Popen([sys.executable, "-m", "stacnas", command, "--config", "/dev/stdin", "--out", str(out),
                                "--resume" if resume else "--force"], stdin=subprocess.PIPE, text=True)
    # SIGTERM to the benchmark, or Ctrl-C (which a terminal sends the child too): the child checkpoints and stops
    previous = signal.signal(signal.SIGTERM, lambda *_: process.send_signal(signal.SIGTERM))
    try:
        process.communicate(options)
    except KeyboardInterrupt:
        process.send_signal(signal.SIGTERM)
        process.wait()
        raise
    finally:
        signal.signal(signal.SIGTERM, previous)
    code = process.returncode
    if code:
        raise RunFailed(f"'stacnas {command}' into {out} ended with exit status {code}", code)


def run_pair(cfg: QualityConfig, method: str, seed: int, folder: Path) -> None:
    """Search and train one (method, seed) in `folder`, each in a fresh process, continuing whatever an
    interruption left."""
    search, train = folder / "search", folder / "train"
    files.make_folder(folder)
    if not (search / "summary.json").is_file():
        resume = (search / "config.json").is_file() and method != "random"
        _run_in_process("search", cfg.search_config(method, seed), search, resume)
    if (train / "result.json").is_file():
        if genotypes.load(str(train / "genotype.json")) != genotypes.load(str(search / "genotype.json")):
            raise UsageError(f"{train} trained another cell than {search} found; remove {train} to train it again")
        return
    resume = (train / "checkpoint.pt").is_file()
    _run_in_process("train", cfg.train_config(search / "genotype.json", seed), train, resume)


def _match_share(a: genotypes.Genotype, b: genotypes.Genotype) -> float:
    """The share of (op, input) pairs two genotypes have in common, node by node (the order within a node does not
    matter), over both cell types."""
    same = total = 0
    for cell_type in CELL_TYPES:
        pa, pb = getattr(a, cell_type), getattr(b, cell_type)
        for node in range(0, len(pa), 2):
            same += sum((Counter(map(tuple, pa[node:node + 2])) & Counter(map(tuple, pb[node:node + 2]))).values())
        total += len(pa)
    return same / total


def _mean_std(values: list[float]) -> tuple[float | None, float | None]:
    if not values:
        return None, None
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def eigenvalues(search: Path) -> list[dict]:
    """The Hessian eigenvalues a search logged, in order: {"stage", "epoch", "value"} (and "kept_epoch" where DARTS-ES
    stopped); none for a random cell, which logs no epochs."""
    found, metrics = [], search / "metrics.jsonl"
    for line in files.read_text(metrics, "search metrics").splitlines() if metrics.is_file() else []:
        record = json.loads(line) if line.strip() else {}
        if "hessian_eigenvalue" in record:
            found.append({"stage": record["stage"], "epoch": record["epoch"], "value": record["hessian_eigenvalue"],
                          **({"kept_epoch": record["early_stop_kept_epoch"]} if "early_stop_kept_epoch" in record
                             else {})})
    return found


def summarize(method: str, pairs: list[dict]) -> dict:
    """One method's row from its finished (seed, search summary, training result, Hessian eigenvalues) records."""
    found = [genotypes.from_dict(p["search"]["genotype"]) for p in pairs]
    ops = [op for g in found for cell_type in CELL_TYPES for op, _ in getattr(g, cell_type)]
    accuracy, spread = _mean_std([p["train"]["test_top1"] for p in pairs])
    search_seconds, _ = _mean_std([p["search"]["seconds"] for p in pairs])
    memory = [p["search"].get("peak_cuda_mib", p["search"]["peak_rss_mib"]) for p in pairs]
    stability = [_match_share(a, b) for a, b in itertools.combinations(found, 2)]
    trajectories = [p.get("hessian", []) for p in pairs]
    last = [t[-1]["value"] for t in trajectories if t]
    return {"method": method, "seeds": [p["seed"] for p in pairs], "test_top1_mean": accuracy,
            "test_top1_std": spread, "test_top1": [p["train"]["test_top1"] for p in pairs],
            "params_m_mean": _mean_std([p["train"]["params_m"] for p in pairs])[0],
            "search_seconds_mean": search_seconds, "search_peak_mib_mean": _mean_std(memory)[0],
            "stability": statistics.fmean(stability) if stability else None,
            "parameter_free_share": sum(op in PARAMETER_FREE for op in ops) / len(ops) if ops else None,
            "op_histogram": dict(Counter(ops).most_common()),
            "hessian_last_mean": _mean_std(last)[0] if len(last) == len(pairs) else None, "hessian": trajectories,
            "early_stop_kept_epochs": [next((e["kept_epoch"] for e in t if "kept_epoch" in e), None)
                                       for t in trajectories],
            "genotypes": [genotypes.to_text(g) for g in found]}


def _cell(value, fmt: str) -> str:
    return "–" if value is None else format(value, fmt)


def markdown(rows: list[dict], cfg: QualityConfig) -> str:
    lines = [f"Search quality on {cfg.dataset}, space {cfg.space}: search presets stacnas={cfg.stacnas_preset}, "
             f"darts={cfg.darts_preset}; proxy training preset {cfg.train_preset}; search options "
             f"{cfg.search_options or {}}; training options {cfg.train_options or {}}.", "",
             "| method | seeds | test top-1 % (mean ± std) | params M | search s | search peak MiB | stability | "
             "parameter-free share | Hessian λmax at the end |", "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['method']} | {len(r['seeds'])} | {_cell(r['test_top1_mean'], '.2f')} ± "
                     f"{_cell(r['test_top1_std'], '.2f')} | {_cell(r['params_m_mean'], '.3f')} | "
                     f"{_cell(r['search_seconds_mean'], '.0f')} | {_cell(r['search_peak_mib_mean'], '.0f')} | "
                     f"{_cell(r['stability'], '.2f')} | {_cell(r['parameter_free_share'], '.2f')} | "
                     f"{_cell(r['hessian_last_mean'], '.3f')} |")
    ops = [op for op in OPS if any(op in r["op_histogram"] for r in rows)]
    lines += ["", "Ops in the found cells (both cell types, all seeds):", "",
              "| method | " + " | ".join(short_name(op) for op in ops) + " |", "|---|" + "---|" * len(ops)]
    for r in rows:
        lines.append(f"| {r['method']} | " + " | ".join(str(r["op_histogram"].get(op, 0)) for op in ops) + " |")
    lines += ["", "Per seed, test top-1 %: " + "; ".join(
        f"{r['method']} " + ", ".join(f"{a:.2f}" for a in r["test_top1"]) for r in rows)]
    return "\n".join(lines) + "\n"


def run_benchmark(cfg: QualityConfig, out_dir: str) -> list[dict]:
    """Every (method, seed) not finished yet, then results.json and results.md (and comparison.html) in OUT."""
    cfg.validate()
    out = Path(out_dir)
    seeds = range(cfg.first_seed, cfg.first_seed + cfg.seeds)
    for method in cfg.methods:  # every configuration is checked before any run starts
        for seed in seeds:
            cfg.search_config(method, seed)
    main = distributed.main_process()  # under torchrun every process runs each pair; rank 0 writes
    if main:
        _check_out(cfg, out)
    pairs = [(m, s) for m in cfg.methods for s in seeds]
    for n, (method, seed) in enumerate(pairs, 1):
        folder = out / method / f"seed{seed}"
        done = (folder / "search" / "summary.json").is_file() and (folder / "train" / "result.json").is_file()
        if main:
            print(f"[{n}/{len(pairs)}] {method}, seed {seed}: " + ("finished before" if done else "search, then "
                                                                   "train the cell found"), flush=True)
        if not done:
            run_pair(cfg, method, seed, folder)
    if not main:
        return []
    rows = []
    for method in cfg.methods:
        records = [{"seed": s, "search": json.loads((out / method / f"seed{s}" / "search" / "summary.json")
                                                    .read_text()),
                    "train": json.loads((out / method / f"seed{s}" / "train" / "result.json").read_text()),
                    "hessian": eigenvalues(out / method / f"seed{s}" / "search")}
                   for s in seeds]
        rows.append(summarize(method, records))
    files.write_text(out / "results.json", json.dumps({"config": dataclasses.asdict(cfg), "methods": rows},
                                                      indent=2) + "\n")
    table = markdown(rows, cfg)
    files.write_text(out / "results.md", table)
    print(table)
    if report.plot_extra_missing() is None:
        page = report.write_comparison([out / m / f"seed{s}" for m, s in pairs], out / "comparison.html", force=True)
        print(f"cells side by side: {page}")
    return rows
