"""RobustDARTS' collapse indicator (--hessian-every): the largest eigenvalue of ∇²α of α's loss, by Lanczos on
Hessian-vector products, against the full Hessian autograd builds; and a search that logs it computes exactly what
the same search without it computes."""
import json

import pytest
import torch
import torch.nn.functional as F
from torch.func import functional_call

from stacnas.nn import Supernet
from stacnas.report.figures import curves_figure
from stacnas.report.run_folder import load_run
from stacnas.search import SearchConfig, run_search
from stacnas.search import hessian
from stacnas.spaces import BUILTIN_SPACES

TINY = dict(epochs=2, darts_epochs=2, limit=64, channels=4, stage1_layers=3, stage2_layers=3, darts_layers=3,
            batch_size=32, w_lr=0.05, a_lr=3e-2, report=False, device="cpu")


def _tiny_supernet(space: str, mode: str):
    torch.manual_seed(0)
    model = Supernet(BUILTIN_SPACES[space], C=4, layers=3, num_classes=5, mode=mode).double()
    with torch.no_grad():  # away from uniform α, where the Hessian has more structure
        for a in model.alphas():
            a.normal_(0, 0.5)
    x = torch.randn(6, 3, 8, 8, dtype=torch.float64)
    y = torch.randint(0, 5, (6,))
    return model, [(x[:3], y[:3]), (x[3:], y[3:])]


def _full_hessian(model, batches) -> torch.Tensor:
    names = {id(p): n for n, p in model.named_parameters()}
    alphas = list(model.alphas())
    sizes = [a.numel() for a in alphas]

    def loss(flat):
        params = {names[id(a)]: t.view_as(a) for a, t in zip(alphas, flat.split(sizes))}
        return sum(F.cross_entropy(functional_call(model, params, (x,)), y) for x, y in batches) / len(batches)

    return torch.autograd.functional.hessian(loss, torch.cat([a.detach().reshape(-1) for a in alphas]))


@pytest.mark.parametrize("space", ["s2", "s4"])  # s4: `noise` draws random numbers, from the same seed in both
def test_largest_eigenvalue_is_the_full_hessians(space):
    model, batches = _tiny_supernet(space, "reference")
    torch.manual_seed(1)
    exact = torch.linalg.eigvalsh(_full_hessian(model, batches))
    assert exact.max() > 0  # a positive top eigenvalue to find
    alphas_before = [a.detach().clone() for a in model.alphas()]
    found = hessian.largest_eigenvalue(model, batches, steps=min(40, len(exact)), seed=1)
    assert found == pytest.approx(float(exact.max()), rel=1e-8)
    assert all(torch.equal(a, b) for a, b in zip(model.alphas(), alphas_before))  # α restored bit for bit
    assert all(a.grad is None for a in model.alphas())


def test_every_memory_mode_gives_the_same_eigenvalue_and_keeps_its_mode():
    values = []
    for mode in ("reference", "lean", "recompute"):
        model, batches = _tiny_supernet("s3", mode)
        values.append(hessian.largest_eigenvalue(model, batches, steps=10, seed=0))
        assert model.mode == mode
    assert values[0] > 0 and values[1] == values[0] and values[2] == values[0]


@pytest.mark.parametrize("method, order", [("stacnas", "auto"), ("darts", "first")])
def test_a_search_logging_the_hessian_is_the_search_without_it(tmp_path, method, order):
    runs = {}
    for every in (0, 1):
        out = tmp_path / f"every{every}"
        result = run_search(SearchConfig(**TINY, method=method, order=order, space="s3", hessian_every=every,
                                         hessian_batches=1, hessian_steps=3), str(out))
        runs[every] = (result.genotype, [json.loads(line) for line in (out / "metrics.jsonl").read_text().split("\n")
                                         if line])
    assert runs[0][0] == runs[1][0] and len(runs[0][1]) == len(runs[1][1])
    for plain, logged in zip(runs[0][1], runs[1][1]):
        assert "hessian_eigenvalue" not in plain and torch.isfinite(torch.tensor(logged["hessian_eigenvalue"]))
        for key in ("stage", "epoch", "train_loss", "train_acc", "val_loss", "alpha_softmax"):
            assert plain.get(key) == logged.get(key), key
    run = load_run(tmp_path / "every1")
    titles = [ax.get_title() for ax in curves_figure(run).axes]
    assert titles[-1].startswith("Hessian") and len(titles) == 6
