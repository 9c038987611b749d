"""A table of bad inputs across every subcommand and the Python API. Each must end in exit code 2 and a single line
on stderr naming the cause — no traceback — and leave the folder it ran in byte-for-byte as it was: everything is
checked before anything is written."""
import gzip
import hashlib
import json
from pathlib import Path

import pytest
import torch

from stacnas import cli, genotypes
from stacnas.errors import UsageError
from stacnas.fused import compiled_backend

NO_GPU = not torch.cuda.is_available()
CUDA_KERNELS = compiled_backend.LOAD_ERROR is None and compiled_backend.cuda_built()
QUICK = ["--preset", "quick", "--epochs", "1", "--limit", "64", "--channels", "4", "--stage1-layers", "3",
         "--stage2-layers", "3"]
P = "[" + ", ".join(["('sep_conv_3x3', 0)"] * 8) + "]"


def _files(root: Path) -> dict:
    """What the folder holds: every path and its content's digest."""
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir"
            for p in sorted(root.rglob("*"))}


def _write(root: Path):
    """The user's files the cases point at."""
    files = {
        "clusters5.yaml": "normal: [skip_connect, sep_conv_3x3]\nreduce: [skip_connect]\nclusters: 5\n",
        "only_none.yaml": "normal: [none]\nreduce: [none, skip_connect]\n",
        "bad.yaml": "normal: [skip_connect\n",
        "edges13.yaml": "normal:\n" + "".join("  - [skip_connect]\n" for _ in range(13)) + "reduce: [skip_connect]\n",
        "epochs_abc.yaml": "epochs: abc\n",
        "betas.yaml": "a_betas: 0.5\n",
        "unknown.yaml": "learning_rate: 3\n",
        "list.yaml": "- epochs\n- 3\n",
        "compile_yes.yaml": "compile: 'yes'\n",
        "bad_clusters.json": "{not json",
        "skip_clusters.json": json.dumps({"groups": "skip"}),
        "true_inputs.json": json.dumps({"normal": [["sep_conv_3x3", True]] * 8, "normal_concat": [2],
                                        "reduce": [["sep_conv_3x3", 0]] * 8, "reduce_concat": [2]}),
        "huge_range.txt": f"Genotype(normal={P}, normal_concat=range(2, 1000000000000000000), reduce={P}, "
                          "reduce_concat=range(2, 6))",
        "garbage.pt": "not a checkpoint",
        "a_file": "x",
        "nonempty/keep.txt": "the user's",
    }
    for name, text in files.items():
        (root / name).parent.mkdir(exist_ok=True)
        (root / name).write_text(text)
    (root / "latin1.yaml").write_bytes("name: caf\xe9\n".encode("latin-1"))
    (root / "latin1.txt").write_bytes("Genotype(caf\xe9)".encode("latin-1"))
    fashion = root / "fashion"
    fashion.mkdir()
    for stem in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte",
                 "t10k-labels-idx1-ubyte"):
        (fashion / f"{stem}.gz").write_bytes(b"garbage, not gzip")
    truncated = root / "truncated"
    truncated.mkdir()
    for stem in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte",
                 "t10k-labels-idx1-ubyte"):
        (truncated / f"{stem}.gz").write_bytes(gzip.compress(bytes([0, 0, 8, 3, 0, 0])))
    (root / "empty").mkdir()


# (arguments, fragments of the one line); {root} is the folder the files above are in
CASES = {
    "unknown command": (["frobnicate"], ["invalid choice: 'frobnicate'"]),
    "unknown flag": (["info", "--bogus"], ["unrecognized arguments: --bogus"]),
    "abbreviated flag": (["search", "--epoch", "1"], ["unrecognized arguments: --epoch"]),
    "abbreviated flag 2": (["search", "--stage1", "3"], ["unrecognized arguments: --stage1"]),
    "not a number": (["search", "--epochs", "abc"], ["--epochs", "invalid int value"]),
    "zero epochs": (["search", "--epochs", "0"], ["epochs must be at least 1"]),
    "negative limit": (["search", "--limit", "-5"], ["limit must be at least 0"]),
    "negative learning rate": (["search", "--w-lr", "-0.1"], ["w-lr must be above 0"]),
    "NaN learning rate": (["search", "--w-lr", "nan"], ["w-lr must be a finite number"]),
    "negative workers": (["search", "--workers", "-1"], ["workers must be at least 0"]),
    "fractional channels": (["search", "--channels", "8.5"], ["--channels", "invalid int value"]),
    "23-digit seed": (["search", "--seed", "12345678901234567890123"], ["seed must be at most"]),
    "no nodes": (["search", "--nodes", "0"], ["nodes must be at least 1"]),
    "threshold over 1": (["search", "--cluster-threshold", "2"], ["cluster-threshold must be at most 1"]),
    "beta of 1.5": (["search", "--a-betas", "0.5", "1.5"], ["a-betas must be below 1"]),
    "validation fraction 1.5": (["search", "--val-fraction", "1.5"], ["val-fraction must be below 1"]),
    "bi-level without validation": (["search", "--order", "second", "--val-fraction", "0"],
                                    ["val-fraction must be above 0 for bi-level"]),
    "gradient statistic before BN": (["search", "--clusters", "auto", "--cluster-statistic", "gradient",
                                      "--cluster-before-bn"], ["does not apply to --cluster-statistic gradient"]),
    "device mps": (["search", "--device", "mps"], ["device 'mps'"]),
    "device cuda:x": (["search", "--device", "cuda:x"], ["device 'cuda:x'"]),
    "old kernel backend name": (["search", "--kernels", "reference"], ["invalid choice: 'reference'"]),
    "unknown method": (["search", "--method", "evolution"], ["invalid choice: 'evolution'"]),
    "unknown preset": (["search", "--preset", "huge"], ["invalid choice: 'huge'"]),
    "unknown space": (["search", "--space", "s9"], ["unknown search space 's9'"]),
    "space clusters: 5": (["search", "--space", "{root}/clusters5.yaml"], ["space file: clusters"]),
    "space of none only": (["search", "--space", "{root}/only_none.yaml"], ["other than none"]),
    "space not YAML": (["search", "--space", "{root}/bad.yaml"], ["not valid YAML"]),
    "space not UTF-8": (["search", "--space", "{root}/latin1.yaml"], ["latin1.yaml", "UTF-8"]),
    "space of 13 edges": (["search", "--space", "{root}/edges13.yaml"], ["lists 13 normal edges"]),
    "config epochs: abc": (["search", "--config", "{root}/epochs_abc.yaml"], ["epochs must be an integer"]),
    "config a_betas: 0.5": (["search", "--config", "{root}/betas.yaml"], ["a-betas must be a list of 2 values"]),
    "config unknown key": (["search", "--config", "{root}/unknown.yaml"], ["unknown option 'learning_rate'"]),
    "config a list": (["search", "--config", "{root}/list.yaml"], ["expected a mapping"]),
    "config missing": (["search", "--config", "{root}/missing.yaml"], ["missing.yaml does not exist"]),
    "config not UTF-8": (["search", "--config", "{root}/latin1.yaml"], ["UTF-8"]),
    "clusters neither": (["search", "--clusters", "mine.json"], ["--clusters 'mine.json'", "paper, auto"]),
    "clusters not JSON": (["search", "--clusters", "{root}/bad_clusters.json"], ["not valid JSON"]),
    "clusters groups: skip": (["search", "--clusters", "{root}/skip_clusters.json"], ["expected 'groups'"]),
    "unknown dataset": (["search", "--dataset", "mnist"], ["unknown dataset 'mnist'"]),
    "CIFAR missing": (["search", "--dataset", "cifar10", "--data-root", "{root}/empty"], ["cifar10", "lacks"]),
    "Fashion-MNIST not gzip": (["search", "--dataset", "fashion-mnist", "--data-root", "{root}/fashion"],
                               ["cannot be read as gzip"]),
    "Fashion-MNIST truncated": (["search", "--dataset", "fashion-mnist", "--data-root", "{root}/truncated"],
                                ["not an IDX file"]),
    "folder without a root": (["search", "--dataset", "folder"], ["pass --data-root"]),
    "too few images to split": (["search", *QUICK, "--order", "first", "--limit", "1"], ["too few"]),
    "resume nothing": (["search", "--resume"], ["holds no interrupted run"]),
    "resume and force": (["search", "--resume", "--force"], ["--resume", "--force"]),
    "out not empty": (["search", *QUICK, "--out", "{root}/nonempty"], ["already holds files", "--force"]),
    "out a file": (["search", *QUICK, "--out", "{root}/a_file"], ["is a file"]),
    "no cluster images": (["cluster", "--cluster-images", "0"], ["cluster-images must be at least 1"]),
    "unknown genotype": (["train", "--genotype", "NOPE"], ["NOPE", "neither a known name"]),
    "genotype range to 10^18": (["train", "--genotype", "{root}/huge_range.txt"], ["range() must stay within"]),
    "genotype with true inputs": (["train", "--genotype", "{root}/true_inputs.json"], ["takes input True"]),
    "genotype not UTF-8": (["train", "--genotype", "{root}/latin1.txt"], ["latin1.txt", "UTF-8"]),
    "two cells": (["train", "--layers", "2"], ["layers must be at least 3"]),
    "negative lr": (["train", "--lr", "-1"], ["lr must be above 0"]),
    "negative lr decay": (["train", "--lr-schedule", "exponential", "--lr-decay", "-5"],
                          ["lr-decay must be above 0"]),
    "drop-path 1": (["train", "--drop-path", "1"], ["drop-path must be below 1"]),
    "ImageNet network on 8×8 digits": (["train", "--network", "imagenet", "--limit", "64"],
                                        ["needs images of at least 32×32", "digits has 8×8"]),
    "fp16 on the CPU": (["train", "--amp", "fp16", "--device", "cpu"], ["fp16 needs a CUDA device"]),
    "search fp16 on the CPU": (["search", *QUICK, "--amp", "fp16", "--device", "cpu"], ["fp16 needs a CUDA device"]),
    "search fp16 second order": (["search", *QUICK, "--method", "darts", "--amp", "fp16"],
                                 ["fp16 does not combine with second-order", "--amp bf16 or --order first"]),
    "config compile: 'yes'": (["train", "--config", "{root}/compile_yes.yaml"], ["compile must be true or false"]),
    "train resume nothing": (["train", "--resume"], ["holds no interrupted run"]),
    "eval missing checkpoint": (["eval", "--checkpoint", "{root}/missing.pt"], ["no checkpoint at"]),
    "eval garbage checkpoint": (["eval", "--checkpoint", "{root}/garbage.pt"], ["not a readable stacnas checkpoint"]),
    "eval batch 0": (["eval", "--checkpoint", "{root}/garbage.pt", "--batch-size", "0"],
                     ["batch-size must be an integer of at least 1"]),
    "export garbage": (["export", "--checkpoint", "{root}/garbage.pt", "--out", "{root}/net.pt2"],
                       ["not a readable stacnas checkpoint"]),
    "export batch 0": (["export", "--checkpoint", "{root}/garbage.pt", "--out", "{root}/net.pt2", "--batch-size",
                        "0"], ["batch-size must be an integer of at least 1"]),
    "export into no folder": (["export", "--checkpoint", "{root}/garbage.pt", "--out", "{root}/nowhere/net.pt2"],
                              ["nowhere", "does not exist"]),
    "export over a file": (["export", "--checkpoint", "{root}/garbage.pt", "--out", "{root}/a_file"],
                           ["already exists"]),
    "genotype name": (["genotype", "NOT_A_CELL"], ["neither a known name"]),
    "genotype text cut": (["genotype", "Genotype(normal=[('sep_conv_3x3', 0)"], ["line 1, column 17"]),
    "bench batch 1": (["bench", "supernet", "--batch-size", "1"], ["batch-size must be at least 2"]),
    "bench mode": (["bench", "supernet", "--modes", "fast"], ["invalid choice: 'fast'"]),
    "bench repeats 0": (["bench", "supernet", "--repeats", "0"], ["repeats must be at least 1"]),
    "run unknown dataset": (["run", "--dataset", "mnist"], ["unknown dataset 'mnist'"]),
    "run out not empty": (["run", "--out", "{root}/nonempty"], ["already holds files"]),
    "run ImageNet network on digits": (["run", "--train-config", "{root}/imagenet_network.yaml"],
                                       ["needs images of at least 32×32"]),
}
if NO_GPU:
    CASES["device cuda without a GPU"] = (["search", "--device", "cuda"], ["no GPU is visible"])
if not CUDA_KERNELS:
    CASES["kernels cuda not built or no GPU"] = (["search", "--kernels", "cuda"], ["kernel backend 'cuda'"])
WITH_OUT = ("search", "cluster", "train", "run")


@pytest.fixture
def root(tmp_path):
    _write(tmp_path)
    (tmp_path / "imagenet_network.yaml").write_text("network: imagenet\nepochs: 1\n")
    return tmp_path


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_input_is_one_line_exit_2_and_nothing_written(case, root, capsys, monkeypatch):
    monkeypatch.chdir(root)
    args, fragments = CASES[case]
    args = [a.format(root=root) for a in args]
    if args[0] in WITH_OUT and "--out" not in args:
        args += ["--out", str(root / "out")]
    before = _files(root)
    code = cli.main(args)
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert code == 2, err
    assert len(lines) == 1 and "Traceback" not in err, err
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    assert _files(root) == before, "the run wrote files before it refused"


def test_the_table_is_large():
    assert len(CASES) >= 50


def test_a_bug_is_a_traceback_not_a_usage_error(monkeypatch, capsys):
    """Only stacnas' own errors become one line and exit 2: anything else (a kernel failure, a bug) propagates."""
    from stacnas import info

    monkeypatch.setattr(info, "collect", lambda: (_ for _ in ()).throw(RuntimeError("CUDA error: an illegal access")))
    with pytest.raises(RuntimeError, match="illegal access"):
        cli.main(["info"])


# ---- the Python API ---------------------------------------------------------------------------------------

def test_python_api_refuses_with_usage_errors(tmp_path):
    from stacnas import NetworkCIFAR, SearchConfig, Supernet, load_space, run_search

    with pytest.raises(UsageError, match="got int"):
        load_space(5)
    assert load_space({"normal": ["skip_connect"], "reduce": ["skip_connect"]}).ops() == ["skip_connect"]
    with pytest.raises(UsageError, match="nodes must be a positive integer"):
        Supernet(load_space("darts"), nodes=0)
    with pytest.raises(UsageError, match="at least 3 cells"):
        NetworkCIFAR(genotypes.DARTS_V2, layers=1)
    with pytest.raises(UsageError, match="epochs must be an integer"):
        SearchConfig(epochs="abc").validate()
    with pytest.raises(UsageError, match="genotype JSON must be an object"):
        genotypes.from_dict([1, 2])
    with pytest.raises(UsageError, match="w-lr must be above 0"):
        run_search(SearchConfig(w_lr=-1.0), str(tmp_path / "run"))
    assert not (tmp_path / "run").exists()
