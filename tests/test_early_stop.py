"""DARTS-ES (--early-stop): RobustDARTS' rule on the Hessian eigenvalue's local average, and a search that follows
it — stopping where the rule says, keeping the α of the epoch it names, resumable past the stop."""
import json

import pytest
import torch

from stacnas.errors import Interrupted
from stacnas.search import SearchConfig, early_stop, run_search
from stacnas.search.training import SupernetTraining


def test_local_averages_grow_to_the_window_then_slide():
    values = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0]
    # from the 3rd evaluation: the mean of all while fewer than 5, then of the last 5
    assert early_stop.local_averages(values) == [2.0, 2.5, 3.0, 4.0, 5.0]


def _evaluations(values, every=1):
    return [(every * (i + 1), v) for i, v in enumerate(values)]


def test_a_flat_eigenvalue_never_stops():
    values = [1.0] * 40
    assert all(early_stop.kept_epoch(_evaluations(values[:n]), 1) is None for n in range(1, 41))


def test_growth_stops_at_the_first_evaluation_whose_average_outgrew_its_earlier_one_by_the_factor():
    values = [1.0] * 20 + [1.0 + 0.5 * i for i in range(1, 20)]
    stops = [n for n in range(1, len(values) + 1) if early_stop.kept_epoch(_evaluations(values[:n]), 1) is not None]
    # by hand: after n evaluations the latest average is mean(values[n-5:n]) and stands for epoch n-2; the earlier
    # one, 4 averages back, for epoch n-6, which must be >= 10; stop when latest > 1.3 x earlier
    averages = {n: sum(values[n - 5:n]) / 5 for n in range(5, len(values) + 1)}
    expected = next(n for n in range(10, len(values) + 1) if n - 6 >= 10 and averages[n] > 1.3 * averages[n - 4])
    assert stops[0] == expected
    assert early_stop.kept_epoch(_evaluations(values[:expected]), 1) == expected - 6


def test_no_stop_before_the_start_epoch_and_epochs_scale_with_the_interval():
    growing = [1.5 ** i for i in range(30)]
    # every evaluation: the earliest stop keeps epoch 10 (the start epoch), at the 16th evaluation
    assert early_stop.kept_epoch(_evaluations(growing[:15]), 1) is None
    assert early_stop.kept_epoch(_evaluations(growing[:16]), 1) == 10
    # every 2 epochs: evaluation n is epoch 2n, its average stands 4 epochs back and the earlier one 8 more
    assert early_stop.kept_epoch(_evaluations(growing[:10], every=2), 2) is None  # epoch 20 - 12 = 8 < 10
    assert early_stop.kept_epoch(_evaluations(growing[:11], every=2), 2) == 22 - 4 - 8


TINY = dict(method="darts", order="first", space="s3", darts_epochs=18, limit=64, channels=4, darts_layers=3,
            batch_size=32, w_lr=0.05, a_lr=3e-2, report=False, device="cpu", hessian_batches=1, hessian_steps=2)


@pytest.fixture
def growing_eigenvalue(monkeypatch):
    """The eigenvalue doubles every epoch from epoch 8 (flat before): DARTS-ES stops at epoch 16, the first it may
    (the average of epochs 12-16 against that of 8-12, which stands for epoch 10, the start epoch), keeping epoch
    10's α."""
    def eigenvalue(self):
        self.evaluated = epoch = getattr(self, "evaluated", 0) + 1  # one evaluation an epoch
        return 1.0 if epoch < 8 else 2.0 ** (epoch - 7)
    monkeypatch.setattr(SupernetTraining, "_hessian_eigenvalue", eigenvalue)


def _records(out):
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if line]


def test_a_darts_es_search_stops_where_the_rule_says_and_keeps_that_epochs_alpha(tmp_path, growing_eigenvalue):
    out = tmp_path / "es"
    result = run_search(SearchConfig(**TINY, early_stop=True), str(out))
    records = _records(out)
    values = [r["hessian_eigenvalue"] for r in records]
    kept = early_stop.kept_epoch(list(enumerate(values, 1)), 1)
    assert [r["epoch"] for r in records] == list(range(1, len(records) + 1))
    assert kept == 10 and len(records) == 16 and records[-1]["early_stop_kept_epoch"] == kept
    assert all(early_stop.kept_epoch(list(enumerate(values[:n], 1)), 1) is None for n in range(1, len(values)))
    alphas = records[kept - 1]["alpha_softmax"]
    assert alphas != records[-1]["alpha_softmax"]  # α moved on after the kept epoch
    for cell_type in ("normal", "reduce"):  # the genotype is derived from these
        torch.testing.assert_close(result.alphas[cell_type], torch.tensor(alphas[cell_type]), rtol=1e-6, atol=1e-7)


def test_without_early_stop_the_same_eigenvalues_run_every_epoch(tmp_path, growing_eigenvalue):
    run_search(SearchConfig(**TINY, hessian_every=1), str(tmp_path / "plain"))
    records = _records(tmp_path / "plain")
    assert len(records) == 18 and all("early_stop_kept_epoch" not in r for r in records)
    assert [r["hessian_eigenvalue"] for r in records][6:9] == [1.0, 2.0, 4.0]  # growing as in the stopped search


def test_a_search_interrupted_after_the_stop_resumes_to_the_same_cell(tmp_path, growing_eigenvalue, monkeypatch):
    """Killed after the stopping epoch's checkpoint but before the stage was marked finished: the resumed search
    trains no further epoch and gives the same genotype."""
    uninterrupted = run_search(SearchConfig(**TINY, early_stop=True), str(tmp_path / "a"))
    from stacnas.runtime import run_dir

    def killed(*args, **kwargs):
        raise Interrupted("killed", 143)
    with monkeypatch.context() as patch:
        patch.setattr(run_dir, "mark_finished", killed)
        with pytest.raises(Interrupted):
            run_search(SearchConfig(**TINY, early_stop=True), str(tmp_path / "b"))
    epochs_before = len(_records(tmp_path / "b"))
    resumed = run_search(SearchConfig(**TINY, early_stop=True), str(tmp_path / "b"), resume=True)
    assert len(_records(tmp_path / "b")) == epochs_before
    assert resumed.genotype == uninterrupted.genotype


def test_darts_es_is_a_benchmark_method_on_request():
    from stacnas.bench.search_quality import QualityConfig

    cfg = QualityConfig(dataset="digits", methods=("darts-es",))
    search = cfg.search_config("darts-es", 0)
    assert search.method == "darts" and search.resolved_order() == "first" and search.early_stop
    assert search.hessian_interval() == 1 and "darts-es" not in QualityConfig().methods
