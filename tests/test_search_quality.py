"""The search-quality benchmark end to end at a tiny budget: every (method, seed) searched and trained, the
summary's numbers computed from the runs' own files, finished pairs never redone, an interrupted one continued."""
import json
from pathlib import Path

import pytest

from stacnas import genotypes
from stacnas.bench import search_quality
from stacnas.bench.search_quality import QualityConfig, run_benchmark, summarize
from stacnas.cli import main
from stacnas.errors import UsageError

# each pair's own report is left out (seconds of drawing a run); the benchmark's comparison.html is still written
TINY_SEARCH = {"limit": 64, "epochs": 1, "darts_epochs": 1, "channels": 4, "stage1_layers": 3, "stage2_layers": 3,
               "darts_layers": 3, "batch_size": 32, "report": False}
TINY_TRAIN = {"limit": 64, "epochs": 1, "channels": 4, "layers": 3, "batch_size": 32, "report": False}


def tiny(**kwargs) -> QualityConfig:
    return QualityConfig(**{"dataset": "digits", "seeds": 2, "search_options": TINY_SEARCH,
                            "train_options": TINY_TRAIN, **kwargs})


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench") / "quality"
    rows = run_benchmark(tiny(), str(out))
    return out, rows


def test_every_method_and_seed_is_searched_and_trained(finished):
    out, rows = finished
    assert [r["method"] for r in rows] == ["stacnas", "darts", "darts-first", "random"]
    for row in rows:
        assert row["seeds"] == [0, 1]
        for seed, accuracy in zip(row["seeds"], row["test_top1"]):
            result = json.loads((out / row["method"] / f"seed{seed}" / "train" / "result.json").read_text())
            assert result["test_top1"] == accuracy
        assert row["test_top1_mean"] == pytest.approx(sum(row["test_top1"]) / 2)
        assert 0.0 <= row["stability"] <= 1.0 and 0.0 <= row["parameter_free_share"] <= 1.0
        assert sum(row["op_histogram"].values()) == 2 * 16  # two seeds, 8 pairs per cell, two cells
    configs = {m: json.loads((out / m / "seed0" / "search" / "config.json").read_text()) for m in
               ("stacnas", "darts", "darts-first")}
    assert configs["darts"]["order"] == "second" and configs["darts-first"]["order"] == "first"
    assert all(c["dataset"] == "digits" and c["epochs"] == 1 for c in configs.values())
    saved = json.loads((out / "results.json").read_text())
    assert [r["method"] for r in saved["methods"]] == [r["method"] for r in rows]
    table = (out / "results.md").read_text()
    assert all(f"| {r['method']} | 2 | {r['test_top1_mean']:.2f} ±" in table for r in rows)
    assert (out / "comparison.html").is_file()


def test_stability_and_collapse_share_are_computed_as_defined():
    a = genotypes.load("DARTS_V2")
    b = genotypes.Genotype(list(a.normal), a.normal_concat, [("sep_conv_3x3", inp) for _, inp in a.reduce],
                           a.reduce_concat)
    swapped = genotypes.Genotype([a.normal[1], a.normal[0], *a.normal[2:]], a.normal_concat, a.reduce,
                                 a.reduce_concat)
    assert search_quality._match_share(a, a) == 1.0
    assert search_quality._match_share(a, swapped) == 1.0  # the order within a node does not matter
    same_reduce = sum(op == "sep_conv_3x3" for op, _ in a.reduce)
    assert search_quality._match_share(a, b) == (8 + same_reduce) / 16
    pair = lambda g, seed: {"seed": seed, "search": {"genotype": genotypes.to_dict(g), "seconds": 1.0,  # noqa: E731
                                                    "peak_rss_mib": 10.0},
                            "train": {"test_top1": 90.0 + seed, "params_m": 1.0}}
    row = summarize("x", [pair(a, 0), pair(b, 1)])
    assert row["stability"] == search_quality._match_share(a, b)
    free = sum(op in search_quality.PARAMETER_FREE for g in (a, b) for op, _ in g.normal + g.reduce)
    assert row["parameter_free_share"] == free / 32
    assert row["test_top1_mean"] == 90.5 and row["test_top1_std"] == pytest.approx(0.5 ** 0.5)


def test_a_finished_pair_is_never_redone(finished, monkeypatch):
    out, rows = finished
    stamps = {p: p.stat().st_mtime_ns for p in out.rglob("result.json")}
    saved = json.loads((out / "benchmark.json").read_text())
    del saved["space"]  # a benchmark saved before --space existed continues at the default space
    (out / "benchmark.json").write_text(json.dumps(saved))
    monkeypatch.setattr(search_quality, "run_pair", lambda *a: pytest.fail("a finished pair was run again"))
    assert [r["test_top1"] for r in run_benchmark(tiny(), str(out))] == [r["test_top1"] for r in rows]
    assert {p: p.stat().st_mtime_ns for p in out.rglob("result.json")} == stamps


def test_an_interrupted_benchmark_continues_where_it_stopped(tmp_path, monkeypatch):
    calls, real = [], search_quality.run_pair

    def interrupted(cfg, method, seed, folder):
        calls.append((method, seed))
        if len(calls) == 2:
            raise KeyboardInterrupt
        real(cfg, method, seed, folder)

    monkeypatch.setattr(search_quality, "run_pair", interrupted)
    cfg = tiny(methods=("random", "stacnas"), seeds=1)
    with pytest.raises(KeyboardInterrupt):
        run_benchmark(cfg, str(tmp_path / "q"))
    monkeypatch.setattr(search_quality, "run_pair", lambda *a: (calls.append(a[1:3]), real(*a)))
    run_benchmark(cfg, str(tmp_path / "q"))
    assert calls == [("random", 0), ("stacnas", 0), ("stacnas", 0)]


def test_other_options_in_the_same_folder_are_refused(finished, capsys):
    out, _ = finished
    config = out.parent / "other.yaml"
    config.write_text(json.dumps({"search_options": {**TINY_SEARCH, "epochs": 2}, "train_options": TINY_TRAIN,
                                  "dataset": "digits"}))
    assert main(["bench", "search", "--config", str(config), "--out", str(out)]) == 2
    assert "other options (search_options)" in capsys.readouterr().err


def test_sigterm_stops_the_running_search_and_the_benchmark_resumes(tmp_path):
    """SIGTERM to the benchmark reaches the search it runs (no orphan keeps computing): the search checkpoints and
    stops, the benchmark exits 143, and the same command continues where it stopped."""
    import os
    import signal
    import subprocess
    import sys
    import time

    config = tmp_path / "tiny.yaml"
    config.write_text(json.dumps({"dataset": "digits", "seeds": 1, "methods": ["stacnas"],
                                  "search_options": {**TINY_SEARCH, "epochs": 3, "limit": 256},
                                  "train_options": TINY_TRAIN}))
    out = tmp_path / "q"
    command = [sys.executable, "-m", "stacnas", "bench", "search", "--config", str(config), "--out", str(out)]
    bench = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    metrics = out / "stacnas" / "seed0" / "search" / "metrics.jsonl"
    deadline = time.time() + 300
    while not (metrics.is_file() and metrics.read_text().strip()) and time.time() < deadline:
        time.sleep(0.2)
    assert metrics.is_file(), "the search never logged an epoch"
    bench.send_signal(signal.SIGTERM)
    _, err = bench.communicate(timeout=300)
    assert bench.returncode == 143, err
    assert "exit status 143" in err
    def command_line(pid):
        try:
            return (Path("/proc") / pid / "cmdline").read_bytes().decode(errors="replace").replace("\0", " ")
        except OSError:  # it ended meanwhile
            return ""

    running = [pid for pid in os.listdir("/proc") if pid.isdigit() and str(out) in command_line(pid)]
    assert not running, "a search of the benchmark kept running"
    epochs_done = len(metrics.read_text().splitlines())
    again = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr
    records = [json.loads(line) for line in metrics.read_text().splitlines()]
    assert [(r["stage"], r["epoch"]) for r in records] == [(s, e) for s in ("stage1", "stage2") for e in (1, 2, 3)]
    assert epochs_done >= 1 and (out / "results.md").is_file()


def test_the_collapse_study_gathers_each_spaces_eigenvalues_into_a_table_and_figure(tmp_path, capsys):
    """One space of the study at a tiny budget: its searches run in that space, each logged eigenvalue reaches the
    benchmark's row (trajectory, last value) and the study's table and figure; random cells have none."""
    from stacnas.bench import collapse

    study = tmp_path / "study"
    search = {**TINY_SEARCH, "darts_epochs": 2, "hessian_batches": 1, "hessian_steps": 2}
    rows = run_benchmark(tiny(methods=("darts-es", "random"), seeds=1, space="s3", search_options=search),
                         str(study / "s3"))
    folder = study / "s3" / "darts-es" / "seed0" / "search"
    assert json.loads((folder / "config.json").read_text())["space"] == "s3"
    logged = [json.loads(line)["hessian_eigenvalue"] for line in (folder / "metrics.jsonl").read_text().splitlines()]
    es, random_row = rows
    assert [e["value"] for e in es["hessian"][0]] == logged and len(logged) == 2
    assert es["hessian_last_mean"] == logged[-1] and es["early_stop_kept_epochs"] == [None]  # too short to stop
    assert random_row["hessian"] == [[]] and random_row["hessian_last_mean"] is None
    assert all(op in ("none", "skip_connect", "sep_conv_3x3") for r in rows for op in r["op_histogram"])
    assert main(["bench", "collapse", "--out", str(study)]) == 0
    table = (study / "collapse.md").read_text()
    assert f"| s3 | darts-es | 1 | {es['test_top1_mean']:.2f} ± 0.00 | {es['parameter_free_share']:.2f} | " \
           f"{logged[-1]:.3f} |" in table
    assert "| s3 | random | 1 |" in table and (study / "collapse.png").stat().st_size > 0
    assert json.loads((study / "collapse.json").read_text())["s3"][0]["method"] == "darts-es"
    assert main(["bench", "collapse", "--out", str(tmp_path / "empty")]) == 2
    assert "holds no finished benchmark" in capsys.readouterr().err


def test_the_space_is_the_benchmarks_option_not_a_search_option():
    with pytest.raises(UsageError, match="--space"):
        tiny(search_options={**TINY_SEARCH, "space": "s2"}).validate()
