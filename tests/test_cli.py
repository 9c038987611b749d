import json
import subprocess
import sys

import pytest

from stacnas import genotypes
from stacnas.cli import main

TINY = ["--preset", "quick", "--epochs", "1", "--limit", "96", "--channels", "4", "--stage1-layers", "3",
        "--stage2-layers", "4", "--darts-layers", "3", "--batch-size", "32", "--darts-epochs", "1", "--no-report"]


def run(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "stacnas", *args], capture_output=True, text=True, cwd=cwd,
                          timeout=600)


def assert_usage_error(result, *fragments):
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr
    for fragment in fragments:
        assert fragment in lines[0]


@pytest.mark.parametrize("args, fragments", [
    (["frobnicate"], ["invalid choice: 'frobnicate'"]),
    (["info", "--bogus"], ["unrecognized arguments: --bogus"]),
    (["search", "--epochs", "many"], ["--epochs", "invalid int value"]),
    (["search", "--epochs", "0"], ["epochs must be at least 1"]),
    (["search", "--method", "evolution"], ["invalid choice: 'evolution'"]),
    (["search", "--preset", "huge"], ["invalid choice: 'huge'"]),
    (["search", "--space", "s9"], ["unknown search space 's9'"]),
    (["search", "--dataset", "cifar10", "--data-root", "/nonexistent"], ["cifar10", "/nonexistent"]),
    (["search", "--config", "/nonexistent.yaml"], ["config file /nonexistent.yaml does not exist"]),
    (["search", "--clusters", "mine.json"], ["--clusters 'mine.json'", "paper, auto"]),
    (["search", "--space", "s1", "--clusters", "paper", "--order", "sideways"], ["invalid choice: 'sideways'"]),
    (["search", "--resume"], ["holds no interrupted run to resume"]),
    (["search", "--resume", "--force"], ["--resume", "--force"]),
    (["cluster", "--cluster-images", "0"], ["cluster-images must be at least 1"]),
    (["train", "--genotype", "NOPE"], ["NOPE"]),
    (["train", "--layers", "2"], ["layers must be at least 3"]),
    (["train", "--amp", "fp16", "--device", "cpu"], ["fp16 needs a CUDA device"]),
    (["train", "--resume"], ["holds no interrupted run to resume"]),
    (["eval", "--checkpoint", "/nonexistent.pt"], ["no checkpoint at /nonexistent.pt"]),
    (["export", "--checkpoint", "/nonexistent.pt", "--out", "x.pt2"], ["no checkpoint at /nonexistent.pt"]),
    (["genotype", "Genotype(normal=[('sep_conv_3x3', 0)"], ["line 1, column 17"]),
    (["genotype", "NOT_A_CELL"], ["neither a known name"]),
])
def test_bad_input_is_one_line_and_exit_2(args, fragments, tmp_path, capsys):
    with_out = args[0] in ("search", "cluster", "train")
    code = main([*args, "--out", str(tmp_path / "o")] if with_out else args)  # in this process: a bug raises here
    assert_usage_error(subprocess.CompletedProcess(args, code, "", capsys.readouterr().err), *fragments)


def test_the_command_line_program_reports_bad_input_the_same():
    assert_usage_error(run("search", "--epochs", "0"), "epochs must be at least 1")


def test_bad_config_key(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("epochs: 1\nlearning_rate: 3\n")
    assert_usage_error(run("search", "--config", str(cfg)), "unknown option 'learning_rate'")


def test_help_explains_every_option():
    out = run("search", "--help").stdout
    for flag in ("--method", "--space", "--dataset", "--stage2-layers", "--a-betas", "--w-lr", "--preset", "--out"):
        assert flag in out


def test_info_json():
    result = run("info", "--json")
    assert result.returncode == 0
    data = json.loads(result.stdout)
    assert set(data["backends"]) == {"torch", "cpp", "cuda", "triton"}
    assert data["backends"]["torch"]["available"] is True
    assert all(b["reason"] for b in data["backends"].values())


def test_genotype_converts_between_formats(tmp_path):
    result = run("genotype", "DARTS_V2", "--json")
    path = tmp_path / "g.json"
    path.write_text(result.stdout)
    assert genotypes.load(str(path)) == genotypes.DARTS_V2
    assert run("genotype", str(path)).stdout.strip() == genotypes.to_text(genotypes.DARTS_V2)


@pytest.mark.parametrize("method", ["stacnas", "darts"])
def test_search_writes_a_valid_genotype(tmp_path, method):
    out = tmp_path / "run"
    result = run("search", *TINY, "--method", method, "--out", str(out))
    assert result.returncode == 0, result.stderr
    genotype = genotypes.load(str(out / "genotype.json"))
    assert genotypes.load(str(out / "genotype.txt")) == genotype
    config = json.loads((out / "config.json").read_text())
    assert config["method"] == method and config["epochs"] == 1 and config["channels"] == 4
    assert "torch" in json.loads((out / "environment.json").read_text())["versions"]
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["stage"] for r in records] == (["stage1", "stage2"] if method == "stacnas" else ["darts"])
    if method == "stacnas":
        choice = json.loads((out / "stage1" / "choice.json").read_text())
        stage2 = json.loads((out / "stage2" / "space.json").read_text())
        clusters = json.loads((out / "clusters.json").read_text())["groups"]
        for cell_type in ("normal", "reduce"):
            assert stage2[cell_type] == [["none", *clusters[c]] for c in choice[cell_type]]
    # the output folder is never overwritten silently
    again = run("search", *TINY, "--method", method, "--out", str(out))
    assert_usage_error(again, "already holds files", "--force")


def test_cluster_command_writes_clusters_that_search_accepts(tmp_path):
    out = tmp_path / "c"
    result = run("cluster", *TINY, "--space", "s2", "--cluster-layers", "3", "--cluster-epochs", "1",
                 "--cluster-images", "32", "--out", str(out))
    assert result.returncode == 0, result.stderr
    report = json.loads((out / "clusters.json").read_text())
    assert sorted(op for g in report["groups"] for op in g) == ["sep_conv_3x3", "skip_connect"]
    assert "correlation" in result.stdout and "clusters:" in result.stdout
    search = run("search", *TINY, "--space", "s2", "--clusters", str(out / "clusters.json"), "--out",
                 str(tmp_path / "s"))
    assert search.returncode == 0, search.stderr
    assert json.loads((tmp_path / "s" / "clusters.json").read_text())["groups"] == report["groups"]


def test_random_baseline(tmp_path):
    result = run("search", "--method", "random", "--space", "s3", "--seed", "4", "--out", str(tmp_path / "r"))
    assert result.returncode == 0, result.stderr
    genotype = genotypes.load(str(tmp_path / "r" / "genotype.txt"))
    assert all(op in ("skip_connect", "sep_conv_3x3") for op, _ in genotype.normal + genotype.reduce)


def test_run_searches_then_trains_and_eval_export_read_the_result(tmp_path):
    out = tmp_path / "p"
    search_cfg, train_cfg = tmp_path / "s.yaml", tmp_path / "t.yaml"
    search_cfg.write_text("epochs: 1\nchannels: 4\nstage1_layers: 3\nstage2_layers: 4\nbatch_size: 32\n")
    train_cfg.write_text("epochs: 1\nchannels: 4\nlayers: 3\nbatch_size: 32\n")
    result = run("run", "--preset", "quick", "--search-config", str(search_cfg), "--train-config", str(train_cfg),
                 "--limit", "96", "--out", str(out))
    assert result.returncode == 0, result.stderr
    found = genotypes.load(str(out / "search" / "genotype.json"))
    assert genotypes.load(str(out / "train" / "genotype.json")) == found
    trained = json.loads((out / "train" / "result.json").read_text())
    evaluated = run("eval", "--checkpoint", str(out / "train" / "model.pt"), "--limit", "96", "--json")
    assert evaluated.returncode == 0, evaluated.stderr
    assert json.loads(evaluated.stdout)["test_top1"] == pytest.approx(trained["test_top1"])
    exported = run("export", "--checkpoint", str(out / "train" / "model.pt"), "--out", str(tmp_path / "n.pt2"))
    assert exported.returncode == 0 and (tmp_path / "n.pt2").is_file(), exported.stderr
    again = run("export", "--checkpoint", str(out / "train" / "model.pt"), "--out", str(tmp_path / "n.pt2"))
    assert_usage_error(again, "already exists")
