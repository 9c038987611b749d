import json
import os
import socket

import pytest
import torch
import torch.multiprocessing as mp

from stacnas import genotypes, train
from stacnas.errors import UsageError
from stacnas.genotypes import DARTS_V2, Genotype
from stacnas.train import TrainConfig, count_macs, count_parameters_m, drop_path_at, run_eval, run_train, trainer
from stacnas.train.network import NetworkCIFAR, NetworkImageNet

TINY = dict(layers=3, channels=4, epochs=2, batch_size=32, limit=96, cutout=0, lr=0.05, device="cpu", seed=2,
            report=False)


def test_parameters_match_darts_published_numbers():
    cifar = NetworkCIFAR(DARTS_V2, C=36, layers=20, auxiliary=True)
    assert round(count_parameters_m(cifar), 1) == 3.3  # DARTS (2nd order) on CIFAR-10: 3.3M
    imagenet = NetworkImageNet(DARTS_V2, C=48, layers=14, num_classes=1000, auxiliary=True)
    assert round(count_parameters_m(imagenet), 1) == 4.7  # DARTS on ImageNet: 4.7M


@pytest.mark.parametrize("net, channels, size", [
    (NetworkImageNet(DARTS_V2, C=48, layers=14, num_classes=1000), 3, 224),  # 530M; DARTS' paper states 574M
    (NetworkCIFAR(genotypes.PDARTS, C=8, layers=5, in_channels=1), 1, 28),
])
def test_multiply_adds_agree_with_torch_flop_counter(net, channels, size):
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter, torch.no_grad():
        net.eval()(torch.zeros(1, channels, size, size))
    assert count_macs(net, {"in_channels": channels, "image_size": size}) == counter.get_total_flops() // 2


def test_drop_path_ramps_linearly_and_spares_identity_edges():
    cfg = TrainConfig(drop_path=0.2, epochs=10)
    assert [drop_path_at(cfg, e) for e in (0, 5, 9)] == [0.0, 0.1, pytest.approx(0.18)]
    skip = [("skip_connect", 0), ("skip_connect", 1)] * 4
    conv = [("sep_conv_3x3", 0), ("sep_conv_3x3", 1)] * 4
    for normal, identical in ((skip, True), (conv, False)):
        g = Genotype(normal, [2, 3, 4, 5], DARTS_V2.reduce, [2, 3, 4, 5])
        torch.manual_seed(0)
        cell = NetworkCIFAR(g, C=4, layers=3, auxiliary=False).cells[0].train()
        s = torch.randn(4, 12, 6, 6)
        outs = []
        for seed in (1, 2):
            torch.manual_seed(seed)
            outs.append(cell(s, s, drop_prob=0.5))
        assert torch.equal(*outs) == identical


def test_auxiliary_weight_enters_the_loss():
    logits, aux, y = torch.randn(5, 3), torch.randn(5, 3), torch.tensor([0, 1, 2, 0, 1])
    ce = torch.nn.functional.cross_entropy
    loss = train.training_loss(logits, aux, y, TrainConfig(auxiliary_weight=0.4))
    torch.testing.assert_close(loss, ce(logits, y) + 0.4 * ce(aux, y))
    assert train.training_loss(logits, None, y, TrainConfig()) == ce(logits, y)
    arch = train.architecture(TrainConfig(auxiliary_weight=0.0), DARTS_V2, type("I", (), dict(
        name="digits", num_classes=10, in_channels=1, image_size=8))())
    assert train.build_network(arch).auxiliary_head is None


def test_reports_the_last_epoch_not_the_best(tmp_path, monkeypatch):
    accuracies = iter([90.0, 40.0])
    real = trainer.evaluate

    def fake_evaluate(*args, **kwargs):
        result = real(*args, **kwargs)
        return {**result, "top1": next(accuracies)}

    monkeypatch.setattr(trainer, "evaluate", fake_evaluate)
    result = run_train(TrainConfig(**TINY), str(tmp_path))
    assert result["test_top1"] == 40.0
    assert json.loads((tmp_path / "result.json").read_text())["test_top1"] == 40.0
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["test_top1"] for r in records] == [90.0, 40.0]
    assert [r["drop_path"] for r in records] == [0.0, 0.1]


def test_outputs_eval_and_small_images(tmp_path):
    result = run_train(TrainConfig(**TINY, genotype="PC_DARTS"), str(tmp_path))  # digits: 2×2 at the aux head
    for name in ("model.pt", "result.json", "metrics.jsonl", "config.json", "environment.json", "genotype.json"):
        assert (tmp_path / name).is_file(), name
    assert not (tmp_path / "checkpoint.pt").exists()
    assert genotypes.load(str(tmp_path / "genotype.json")) == genotypes.PC_DARTS
    again = run_eval(str(tmp_path / "model.pt"), "digits", limit=96, device="cpu")
    assert again["test_top1"] == pytest.approx(result["test_top1"])
    assert result["params_m"] > 0 and result["macs_m"] > 0
    with pytest.raises(ValueError, match="trained for 10 classes of 1-channel"):
        train.run_eval(str(tmp_path / "model.pt"), "cifar10", str(_tiny_cifar(tmp_path)), device="cpu")
    bad = tmp_path / "bad.pt"
    torch.save({"weights": torch.zeros(1)}, bad)
    with pytest.raises(ValueError, match="not a trained stacnas network"):
        train.load_trained(str(bad))


def _tiny_cifar(tmp_path):
    import pickle

    import numpy as np

    root = tmp_path / "cifar"
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        with open(folder / name, "wb") as f:
            pickle.dump({"data": rng.integers(0, 255, (4, 3072), dtype=np.uint8), "labels": [0, 1, 2, 3]}, f)
    return root


class _Interrupt(Exception):
    pass


def test_resume_gives_the_same_training(tmp_path, monkeypatch):
    cfg = dict(TINY, epochs=3, batch_size=16, checkpoint_every=2, drop_path=0.3)
    full = run_train(TrainConfig(**cfg), str(tmp_path / "full"))
    real_step, calls = trainer.Trainer.step, {"n": 0}

    def step(self, x, y):
        calls["n"] += 1
        if calls["n"] == 6 + 4:  # epoch 2, step 4 (checkpoint after step 2)
            raise _Interrupt
        return real_step(self, x, y)

    monkeypatch.setattr(trainer.Trainer, "step", step)
    with pytest.raises(_Interrupt):
        run_train(TrainConfig(**cfg), str(tmp_path / "cut"))
    monkeypatch.setattr(trainer.Trainer, "step", real_step)
    resumed = run_train(TrainConfig(**cfg), str(tmp_path / "cut"), resume=True)
    assert resumed["test_top1"] == full["test_top1"]
    a = torch.load(tmp_path / "full" / "model.pt", weights_only=True)["model"]
    b = torch.load(tmp_path / "cut" / "model.pt", weights_only=True)["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)

    def losses(d):
        return [r["train_loss"] for r in map(json.loads, (tmp_path / d / "metrics.jsonl").read_text().splitlines())]
    assert losses("cut") == losses("full")
    with pytest.raises(ValueError, match="holds no interrupted run to resume"):
        run_train(TrainConfig(**cfg), str(tmp_path / "full"), resume=True)


@pytest.mark.parametrize("fmt", ["export", "torchscript"])
def test_export_gives_the_same_outputs(tmp_path, fmt):
    run_train(TrainConfig(**{**TINY, "epochs": 1}), str(tmp_path / "run"))
    path = train.export(str(tmp_path / "run" / "model.pt"), str(tmp_path / "net.bin"), fmt, batch_size=3)
    net, _ = train.load_trained(str(tmp_path / "run" / "model.pt"))
    x = torch.randn(3, 1, 8, 8)
    loaded = torch.export.load(str(path)).module() if fmt == "export" else torch.jit.load(str(path))
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), net(x)[0], rtol=1e-5, atol=1e-5)
    with pytest.raises(UsageError, match="already exists"):
        train.export(str(tmp_path / "run" / "model.pt"), str(path), fmt)


def test_onnx_export_gives_the_same_outputs(tmp_path):
    ort = pytest.importorskip("onnxruntime")
    run_train(TrainConfig(**{**TINY, "epochs": 1}), str(tmp_path / "run"))
    path = train.export(str(tmp_path / "run" / "model.pt"), str(tmp_path / "net.onnx"), "onnx", batch_size=2)
    net, _ = train.load_trained(str(tmp_path / "run" / "model.pt"))
    x = torch.randn(2, 1, 8, 8)
    (out,) = ort.InferenceSession(str(path)).run(None, {"images": x.numpy()})
    with torch.no_grad():
        torch.testing.assert_close(torch.from_numpy(out), net(x)[0], rtol=1e-4, atol=1e-4)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank, port, tmp):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE="2",
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    out = os.path.join(tmp, "out" if rank == 0 else "out-rank1")
    from stacnas.train.trainer import Trainer

    captured = {}
    real_finish = trainer._finish

    def finish(trainer: Trainer, record, seconds):
        captured["state"] = {k: v.clone() for k, v in trainer.net.state_dict().items()}
        return real_finish(trainer, record, seconds)

    trainer._finish = finish
    run_train(TrainConfig(**{**TINY, "drop_path": 0.2}), out)
    torch.save(captured["state"], os.path.join(tmp, f"rank{rank}.pt"))


def test_two_ranks_stay_in_sync(tmp_path):
    mp.spawn(_worker, args=(_free_port(), str(tmp_path)), nprocs=2, join=True)
    a, b = (torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1))
    params = [k for k in a if "running" not in k and "num_batches" not in k]
    assert all(torch.equal(a[k], b[k]) for k in params)
    assert (tmp_path / "out" / "result.json").is_file() and not (tmp_path / "out-rank1").exists()
    assert json.loads((tmp_path / "out" / "result.json").read_text())["processes"] == 2


def _first_loss(path):
    return json.loads((path / "metrics.jsonl").read_text().splitlines()[0])["train_loss"]


def test_bf16_autocast_and_channels_last_train_close_to_fp32(tmp_path):
    cfg = dict(TINY, epochs=1, drop_path=0.0)
    run_train(TrainConfig(**cfg), str(tmp_path / "fp32"))
    run_train(TrainConfig(**cfg, amp="bf16", channels_last=True), str(tmp_path / "bf16"))
    fp32, bf16 = _first_loss(tmp_path / "fp32"), _first_loss(tmp_path / "bf16")
    assert fp32 != bf16 and abs(fp32 - bf16) < 0.05 * fp32  # autocast really ran, and computed the same thing


def test_compiled_training_matches_eager(tmp_path):
    cfg = dict(TINY, epochs=1, drop_path=0.0, limit=64)  # no drop-path: compiled code draws its own random numbers
    run_train(TrainConfig(**cfg), str(tmp_path / "eager"))
    run_train(TrainConfig(**cfg, compile=True), str(tmp_path / "compiled"))
    a = torch.load(tmp_path / "eager" / "model.pt", weights_only=True)["model"]
    b = torch.load(tmp_path / "compiled" / "model.pt", weights_only=True)["model"]
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name", ["STACNAS_C10", "STACNAS_C100", "STACNAS_IMAGENET"])
def test_stacnas_published_cells_train_by_name(name, tmp_path):
    from stacnas.cli import main

    out = tmp_path / name
    assert main(["train", "--preset", "quick", "--genotype", name, "--epochs", "1", "--limit", "64", "--channels",
                 "4", "--layers", "3", "--out", str(out)]) == 0
    assert genotypes.load(str(out / "genotype.json")) == genotypes.KNOWN[name]


def test_resume_of_a_run_stopped_while_writing_its_report(tmp_path, capsys):
    """Killed after result.json (checkpoint removed) but before its report: --resume trains nothing, writes the
    report and returns the result."""
    out, cfg = tmp_path / "run", {**TINY, "report": True}
    result = run_train(TrainConfig(**cfg), str(out))
    (out / "report.html").unlink()
    model = (out / "model.pt").read_bytes()
    again = run_train(TrainConfig(**cfg), str(out), resume=True)
    assert again == json.loads((out / "result.json").read_text()) and again["test_top1"] == result["test_top1"]
    assert "finished training" in capsys.readouterr().out
    assert (out / "report.html").is_file() and (out / "model.pt").read_bytes() == model


def test_a_finished_run_without_a_report_has_nothing_to_resume(tmp_path):
    out = tmp_path / "run"
    run_train(TrainConfig(**TINY), str(out))  # --no-report
    assert not (out / "report.html").exists()
    with pytest.raises(UsageError, match="no interrupted run to resume"):
        run_train(TrainConfig(**TINY), str(out), resume=True)
    assert not (out / "report.html").exists()
