"""Figures and the HTML report: written for a quick search and a quick training, valid PNG/SVG of sensible size,
cell diagrams holding every edge of their genotype, the report loading in headless Chromium with no console error
and every image decoded, TensorBoard logging, and the messages where a package is missing."""
import json
import re
import shutil
import struct
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from stacnas import genotypes, report
from stacnas.cli import main
from stacnas.names import CELL_TYPES
from stacnas.report import cell_graph
from stacnas.report.run_folder import load_run, load_runs

pytest.importorskip("matplotlib", reason="the plot extra is not installed: pip install -e '.[plot]'")

SEARCH = ["--preset", "quick", "--limit", "128", "--epochs", "2", "--channels", "4", "--stage1-layers", "3",
          "--stage2-layers", "4", "--batch-size", "32", "--clusters", "auto", "--cluster-layers", "3",
          "--cluster-epochs", "1", "--cluster-images", "32"]
TRAIN = ["--preset", "quick", "--limit", "128", "--epochs", "2", "--channels", "4", "--layers", "3",
         "--batch-size", "32"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A quick StacNAS search with automatic clustering and TensorBoard, and a quick training of its cell."""
    root = tmp_path_factory.mktemp("runs")
    assert main(["search", *SEARCH, "--tensorboard", "--out", str(root / "search")]) == 0
    assert main(["train", *TRAIN, "--genotype", str(root / "search" / "genotype.json"),
                 "--out", str(root / "train")]) == 0
    return root / "search", root / "train"


def png_size(path: Path) -> tuple[int, int]:
    """(width, height) from a PNG's signature and IHDR chunk; fails on anything that is not a PNG."""
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR", f"{path} is not a PNG"
    assert data[-8:-4] == b"IEND", f"{path} is truncated"
    return struct.unpack(">II", data[16:24])


def assert_sensible_png(path: Path, min_side=150):
    width, height = png_size(path)
    assert min_side <= width <= 6000 and min_side <= height <= 6000, (path, width, height)
    assert path.stat().st_size > 5000, f"{path}: {path.stat().st_size} bytes, nearly empty"


def assert_sensible_svg(path: Path):
    root = ET.parse(path).getroot()
    assert root.tag.endswith("svg"), path
    assert path.stat().st_size > 5000
    assert len(list(root.iter())) > 20, f"{path} draws almost nothing"


SEARCH_PLOTS = ["cell_normal", "cell_reduce", "clustering", "curves"] + [
    f"alpha_{stage}_{t}" for stage in ("cluster", "stage1", "stage2") for t in CELL_TYPES]


def test_every_figure_of_a_search_is_written_and_valid(runs):
    search, _ = runs
    assert sorted(p.stem for p in (search / "plots").glob("*.png")) == sorted(SEARCH_PLOTS)
    for path in (search / "plots").glob("*.png"):
        assert_sensible_png(path)
    assert (search / "report.html").is_file()


def test_every_figure_of_a_training_is_written_and_valid(runs):
    _, train = runs
    assert sorted(p.stem for p in (train / "plots").glob("*.png")) == ["cell_normal", "cell_reduce", "curves"]
    for path in (train / "plots").glob("*.png"):
        assert_sensible_png(path)


def test_plot_command_writes_png_and_svg(runs, capsys):
    search, _ = runs
    assert main(["plot", str(search), "--format", "png,svg"]) == 0
    printed = capsys.readouterr().out.split()
    assert sorted(Path(p).name for p in printed) == sorted(f"{n}.{f}" for n in SEARCH_PLOTS for f in ("png", "svg"))
    for name in SEARCH_PLOTS:
        assert_sensible_svg(search / "plots" / f"{name}.svg")


@pytest.mark.parametrize("name", ["DARTS_V2", "PC_DARTS"])
def test_cell_graph_holds_every_edge_of_the_genotype(name):
    genotype = genotypes.load(name)
    for cell_type in CELL_TYPES:
        graph = cell_graph.cell_graph(genotype, cell_type)
        pairs = getattr(genotype, cell_type)
        labelled = sorted(e for e in graph.edges if e[2])
        expected = sorted((cell_graph.INPUTS[inp] if inp < 2 else str(inp - 2), str(i // 2), op)
                          for i, (op, inp) in enumerate(pairs))
        assert labelled == expected
        concat = getattr(genotype, cell_type + "_concat")
        assert sorted(src for src, dst, label in graph.edges if dst == cell_graph.OUTPUT) == \
            sorted(str(c - 2) for c in concat)
        names = {n for n, _ in graph.nodes}
        assert all(src in names and dst in names for src, dst, _ in graph.edges)
        # what graphviz is handed holds the same edges
        source = cell_graph._graphviz(graph).source
        drawn = re.findall(r'"?([^"\s]+)"?\s*->\s*"?([^"\s]+)"?\s*\[label="?(\w*)"?', source)
        assert sorted(drawn) == sorted(graph.edges)


@pytest.mark.parametrize("engine", ["matplotlib", "graphviz"])
@pytest.mark.parametrize("fmt", ["png", "svg"])
def test_both_engines_draw_a_cell(engine, fmt, tmp_path):
    if engine == "graphviz" and not cell_graph.graphviz_available():
        pytest.skip("graphviz's dot program is not installed (apt-get install graphviz)")
    graph = cell_graph.cell_graph(genotypes.load("DARTS_V2"), "normal")
    path = tmp_path / f"cell.{fmt}"
    assert cell_graph.draw_cell(graph, path, fmt, engine) == engine
    if fmt == "png":
        assert_sensible_png(path)
    else:
        assert_sensible_svg(path)
        text = path.read_text()
        for _, _, op in graph.edges:  # every op label is drawn as text
            assert op in text or not op


def test_without_dot_the_cells_are_drawn_with_matplotlib(monkeypatch, tmp_path):
    monkeypatch.setattr(shutil, "which", lambda name: None)
    assert main(["plot", "--genotype", "DARTS_V1", "--out", str(tmp_path)]) == 0
    assert_sensible_png(tmp_path / "cell_normal.png")


def test_report_states_wall_time_per_stage_and_the_cells(runs):
    search, train = runs
    text = (search / "report.html").read_text()
    for expected in ("Wall time per stage", "cluster", "stage1", "stage2", "Operator clusters", "source: auto",
                     "Stage 1: the cluster chosen on each edge", genotypes.to_text(load_run(search).genotype)[:60],
                     "Environment and kernel backends", "Configuration"):
        assert expected in text or expected.replace("'", "&#x27;") in text, expected
    assert "http://" not in text and "https://" not in text  # nothing to fetch
    result = json.loads((train / "result.json").read_text())
    assert f"{result['test_top1']:.4g}" in (train / "report.html").read_text()


def test_run_folder_reads_kinds_and_a_pipeline(runs, tmp_path):
    search, train = runs
    assert load_run(search).kind == "search" and load_run(train).kind == "train"
    pipeline = tmp_path / "p"
    pipeline.mkdir()
    shutil.copytree(search, pipeline / "search")
    shutil.copytree(train, pipeline / "train")
    assert [r.kind for r in load_runs(pipeline)] == ["search", "train"]
    assert main(["report", str(pipeline)]) == 0
    text = (pipeline / "report.html").read_text()
    assert "Search:" in text and "Train:" in text


def test_comparison_is_never_written_over_without_force(runs, tmp_path, capsys):
    search, train = runs
    out = tmp_path / "cmp.html"
    assert main(["report", str(search), str(train), "--out", str(out)]) == 0
    assert main(["report", str(search), str(train), "--out", str(out)]) == 2
    assert "--force" in capsys.readouterr().err
    assert main(["report", str(search), str(train), "--out", str(out), "--force"]) == 0


def test_tensorboard_holds_scalars_named_alpha_and_figures(runs):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    search, _ = runs
    events = EventAccumulator(str(search / "tensorboard"), size_guidance={"images": 0, "scalars": 0})
    events.Reload()
    scalars, images = events.Tags()["scalars"], events.Tags()["images"]
    for stage, epochs in (("cluster", [1]), ("stage1", [1, 2]), ("stage2", [1, 2])):
        assert [e.step for e in events.Scalars(f"{stage}/train_loss")] == epochs
    assert "alpha_stage2_normal/c_{k-2}→0/none" in scalars
    record = json.loads((search / "metrics.jsonl").read_text().splitlines()[-1])
    logged = events.Scalars("alpha_stage2_normal/c_{k-2}→0/none")[-1].value
    assert logged == pytest.approx(record["alpha_softmax"]["normal"][0][0], rel=1e-6)
    assert sorted(images) == sorted(f"figures/{n}" for n in SEARCH_PLOTS)


def test_tensorboard_missing_is_one_line_before_the_run(monkeypatch, tmp_path, capsys):
    import builtins

    real_import = builtins.__import__

    def no_tensorboard(name, *args, **kwargs):
        if name.startswith("torch.utils.tensorboard"):
            raise ImportError("No module named 'tensorboard'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_tensorboard)
    assert main(["train", *TRAIN, "--tensorboard", "--out", str(tmp_path / "t")]) == 2
    assert "pip install tensorboard" in capsys.readouterr().err
    assert not (tmp_path / "t").exists()


def test_without_the_plot_extra_runs_go_on_and_plot_says_what_to_install(monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(report, "plot_extra_missing", lambda: "matplotlib is not installed")
    assert main(["train", *TRAIN, "--epochs", "1", "--out", str(tmp_path / "t")]) == 0
    err = capsys.readouterr().err
    assert "no report.html" in err and "stacnas[plot]" in err
    assert (tmp_path / "t" / "result.json").is_file() and not (tmp_path / "t" / "report.html").exists()
    for args in (["plot", str(tmp_path / "t")], ["report", str(tmp_path / "t")]):
        assert main(args) == 2
        assert "pip install 'stacnas[plot]'" in capsys.readouterr().err


@pytest.mark.parametrize("args, message", [
    (["plot"], "give a run folder or --genotype"),
    (["plot", "RUN", "--format", "jpg"], "--format jpg"),
    (["plot", "RUN", "--out", "x"], "--out is for --genotype"),
    (["plot", "--genotype", "NOPE"], "neither a known name"),
    (["report", "missing-folder"], "does not exist"),
    (["report", "EMPTY"], "not a stacnas run folder"),
])
def test_bad_plot_and_report_input(args, message, runs, tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    args = [{"RUN": str(runs[0]), "EMPTY": str(tmp_path / "empty")}.get(a, a) for a in args]
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err


# ---- in a real browser -------------------------------------------------------------------------------------------

def _browser():
    """Headless Debian Chromium driven by selenium, or a skip saying what is missing."""
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed (the test extra)")
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    driver_path = shutil.which("chromedriver")
    if not chromium or not driver_path:
        pytest.skip("no browser: apt-get install chromium chromium-driver")
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--window-size=1400,1000"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    from selenium.webdriver.chrome.service import Service

    return webdriver.Chrome(service=Service(driver_path), options=options)


@pytest.fixture(scope="module")
def browser():
    driver = _browser()
    yield driver
    driver.quit()


def _load(browser, page: Path) -> dict:
    browser.get(page.resolve().as_uri())
    state = browser.execute_script(
        "return {ready: document.readyState, title: document.title,"
        " images: Array.from(document.images).map(i => [i.alt, i.complete, i.naturalWidth, i.naturalHeight]),"
        " fetched: performance.getEntriesByType('resource').map(r => r.name)};")
    state["errors"] = [e for e in browser.get_log("browser") if e["level"] in ("SEVERE", "WARNING")]
    return state


@pytest.mark.parametrize("which", ["search", "train", "comparison"])
def test_report_loads_in_chromium_with_every_image_decoded(which, runs, browser, tmp_path):
    search, train = runs
    if which == "comparison":
        page = report.write_comparison([search, train], tmp_path / "cmp.html")
        expected = 4  # the cells of the search and of the training
    else:
        page = (search if which == "search" else train) / "report.html"
        expected = len(list(page.parent.joinpath("plots").glob("*.png")))
    state = _load(browser, page)
    assert state["ready"] == "complete" and state["title"].startswith("stacnas")
    assert state["errors"] == []
    assert state["fetched"] == []  # self-contained: nothing loaded from anywhere
    assert len(state["images"]) == expected
    for alt, complete, width, height in state["images"]:
        assert complete and width > 100 and height > 100, (alt, width, height)
