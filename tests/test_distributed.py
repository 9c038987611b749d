"""Data-parallel search with 2 CPU processes (gloo), started the way torchrun starts them: through the environment."""
import json
import os
import socket

import pytest
import torch
import torch.multiprocessing as mp

TINY = dict(epochs=1, darts_epochs=1, limit=96, channels=4, stage1_layers=3, stage2_layers=4, darts_layers=3,
            batch_size=16, w_lr=0.05, a_lr=3e-2, device="cpu", seed=3, report=False)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank, port, tmp, method, order):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE="2",
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    from stacnas.search import SearchConfig, run_search

    out = os.path.join(tmp, "out" if rank == 0 else "out-rank1")
    result = run_search(SearchConfig(**TINY, method=method, order=order), out)
    torch.save({"alphas": result.alphas, "genotype": json.dumps(result.genotype._asdict())},
               os.path.join(tmp, f"rank{rank}.pt"))


@pytest.mark.parametrize("method, order", [("stacnas", "one-level"), ("darts", "second")])
def test_two_ranks_end_with_the_same_alpha_and_genotype(tmp_path, method, order):
    mp.spawn(_worker, args=(_free_port(), str(tmp_path), method, order), nprocs=2, join=True)
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1))
    assert r0["genotype"] == r1["genotype"]
    for t in ("normal", "reduce"):
        assert torch.equal(r0["alphas"][t], r1["alphas"][t])
        assert r0["alphas"][t].std() > 1e-3  # α moved: the ranks saw different shards and still agree
    assert (tmp_path / "out" / "genotype.json").is_file() and (tmp_path / "out" / "metrics.jsonl").is_file()
    assert not (tmp_path / "out-rank1").exists()  # rank 0 alone writes
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["ranks"] == 2
