"""Crashes and interruptions, as a preempted machine deals them: SIGKILL at random moments (in both search stages and
in final training), SIGTERM and SIGINT, a truncated or damaged checkpoint, a torn metrics line, a stale folder reused
with --force. Each run, resumed, ends bit-identical to the uninterrupted one, or ends in a clear refusal. A run whose
loss diverges stops with exit 3 and writes no genotype; a corrupt image is named."""
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

SEARCH = ["search", "--preset", "quick", "--epochs", "2", "--limit", "96", "--batch-size", "16", "--channels", "4",
          "--stage1-layers", "3", "--stage2-layers", "4", "--checkpoint-every", "1", "--seed", "5"]
TRAIN = ["train", "--preset", "quick", "--epochs", "3", "--limit", "96", "--batch-size", "16", "--layers", "3",
         "--channels", "4", "--checkpoint-every", "1", "--cutout", "0", "--seed", "5"]
VOLATILE = {"seconds", "peak_rss_mib", "peak_cuda_mib"}  # what differs between identical runs


def _start(args, out, env=None):
    return subprocess.Popen([sys.executable, "-m", "stacnas", *args, "--out", str(out)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env={**os.environ, **(env or {})})


def _run(args, out, env=None):
    process = _start(args, out, env)
    stdout, stderr = process.communicate(timeout=600)
    return process.returncode, stdout, stderr


def _signal_when(args, out, ready, sig, delay=0.0):
    """Start a run, send `sig` once ready(out) holds (and `delay` seconds more); the process must still have been
    running then."""
    process = _start(args, out)
    deadline = time.time() + 300
    while not ready(out) and process.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    time.sleep(delay)
    assert process.poll() is None, "the run ended before it could be interrupted"
    process.send_signal(sig)
    stdout, stderr = process.communicate(timeout=300)
    return process.returncode, stderr


def _metrics(out: Path):
    return [{k: v for k, v in json.loads(line).items() if k not in VOLATILE}
            for line in (out / "metrics.jsonl").read_text().splitlines()]


def _search_outcome(out: Path):
    return (json.loads((out / "genotype.json").read_text()), _metrics(out),
            torch.load(out / "stage2" / "supernet.pt", weights_only=True))


def _train_outcome(out: Path):
    result = {k: v for k, v in json.loads((out / "result.json").read_text()).items()
              if k not in VOLATILE | {"train_seconds"}}
    return result, _metrics(out), torch.load(out / "model.pt", weights_only=True)["model"]


def _assert_same(a, b):
    (ga, ma, sa), (gb, mb, sb) = a, b
    assert ga == gb and ma == mb
    assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def _exists(*parts):
    return lambda out: out.joinpath(*parts).is_file()


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The uninterrupted runs."""
    root = tmp_path_factory.mktemp("reference")
    for args, name in ((SEARCH, "search"), (TRAIN, "train")):
        code, _, stderr = _run(args, root / name)
        assert code == 0, stderr
    return {"search": _search_outcome(root / "search"), "train": _train_outcome(root / "train")}


@pytest.mark.parametrize("where, delay", [(("stage1", "checkpoint.pt"), 0.0), (("stage1", "checkpoint.pt"), 0.3),
                                          (("stage2", "checkpoint.pt"), 0.1)])
def test_sigkill_during_a_search_then_resume(tmp_path, reference, where, delay):
    out = tmp_path / "cut"
    code, _ = _signal_when(SEARCH, out, _exists(*where), signal.SIGKILL, delay * random.random())
    assert code == -signal.SIGKILL
    code, _, stderr = _run([*SEARCH, "--resume"], out)
    assert code == 0, stderr
    _assert_same(_search_outcome(out), reference["search"])


@pytest.mark.parametrize("delay", [0.0, 0.4])
def test_sigkill_during_training_then_resume(tmp_path, reference, delay):
    out = tmp_path / "cut"
    code, _ = _signal_when(TRAIN, out, _exists("checkpoint.pt"), signal.SIGKILL, delay * random.random())
    assert code == -signal.SIGKILL
    code, _, stderr = _run([*TRAIN, "--resume"], out)
    assert code == 0, stderr
    _assert_same(_train_outcome(out), reference["train"])


@pytest.mark.parametrize("args, kind, sig, code", [(SEARCH, "search", signal.SIGTERM, 143),
                                                   (TRAIN, "train", signal.SIGINT, 130)])
def test_sigterm_and_sigint_checkpoint_the_step_and_stop(tmp_path, reference, args, kind, sig, code):
    out = tmp_path / "cut"
    where = ("stage1", "checkpoint.pt") if kind == "search" else ("checkpoint.pt",)
    returned, stderr = _signal_when(args, out, _exists(*where), sig)
    lines = stderr.strip().splitlines()
    assert returned == code, stderr
    assert "checkpointed: --resume continues" in lines[-1] and "Traceback" not in stderr
    saved = torch.load(out.joinpath(*where), weights_only=True)
    assert f"at epoch {saved['epoch'] + 1}, step {saved['step']}" in lines[-1]  # the step it stood at
    returned, _, stderr = _run([*args, "--resume"], out)
    assert returned == 0, stderr
    outcome = _search_outcome(out) if kind == "search" else _train_outcome(out)
    _assert_same(outcome, reference[kind])


@pytest.mark.parametrize("damage", ["truncated", "bit flipped", "both gone bad"])
def test_a_damaged_checkpoint_falls_back_to_the_previous_one(tmp_path, reference, damage):
    out = tmp_path / "cut"
    code, _ = _signal_when(SEARCH, out, _exists("stage1", "checkpoint.prev.pt"), signal.SIGKILL, 0.1)
    assert code == -signal.SIGKILL
    ckpt = out / "stage1" / "checkpoint.pt"
    data = bytearray(ckpt.read_bytes())
    if damage == "truncated":
        ckpt.write_bytes(data[:len(data) // 2])
    else:
        data[len(data) - 200] ^= 0xFF  # inside the last tensor's bytes: the file still loads
        ckpt.write_bytes(data)
    if damage == "both gone bad":
        (out / "stage1" / "checkpoint.prev.pt").write_bytes(b"torn")
    code, _, stderr = _run([*SEARCH, "--resume"], out)
    assert code == 0, stderr
    assert "stacnas: warning:" in stderr and str(ckpt) in stderr
    assert ("starting over" in stderr) == (damage == "both gone bad")
    _assert_same(_search_outcome(out), reference["search"])


def test_a_torn_metrics_line_is_dropped_on_resume(tmp_path, reference):
    out = tmp_path / "cut"
    code, _ = _signal_when(SEARCH, out, _exists("stage2", "checkpoint.pt"), signal.SIGKILL)
    assert code == -signal.SIGKILL
    with (out / "metrics.jsonl").open("a") as f:
        f.write('{"stage": "stage2", "epo')
    code, _, stderr = _run([*SEARCH, "--resume"], out)
    assert code == 0, stderr
    assert "not a whole metrics record" in stderr
    _assert_same(_search_outcome(out), reference["search"])


def test_force_into_a_finished_folder_then_kill_and_resume_gives_the_new_run(tmp_path, reference):
    """The stale run's supernets must not be taken for the new run's finished stages."""
    out = tmp_path / "stale"
    code, _, stderr = _run([*SEARCH[:-1], "6"], out)  # another seed, finished
    assert code == 0, stderr
    code, _ = _signal_when([*SEARCH, "--force"], out, _exists("stage1", "checkpoint.pt"), signal.SIGKILL)
    assert code == -signal.SIGKILL
    assert not (out / "stage2").exists()  # --force removed the stale run's files first
    code, _, stderr = _run([*SEARCH, "--resume"], out)
    assert code == 0, stderr
    _assert_same(_search_outcome(out), reference["search"])


def test_resume_with_another_config_is_refused(tmp_path):
    out = tmp_path / "cut"
    code, _ = _signal_when(SEARCH, out, _exists("stage1", "checkpoint.pt"), signal.SIGKILL)
    assert code == -signal.SIGKILL
    before = sorted(p.name for p in out.rglob("*"))
    code, _, stderr = _run([*SEARCH[:-1], "6", "--resume"], out)
    assert code == 2 and "options differ" in stderr and "seed" in stderr
    assert sorted(p.name for p in out.rglob("*")) == before


def test_another_thread_count_on_resume_is_warned(tmp_path):
    out = tmp_path / "cut"
    code, _ = _signal_when(TRAIN, out, _exists("checkpoint.pt"), signal.SIGKILL)
    assert code == -signal.SIGKILL
    threads = torch.load(out / "checkpoint.pt", weights_only=True)["threads"]
    other = {"OMP_NUM_THREADS": "1" if threads > 1 else "2"}  # torch caps the count at the machine's cores
    probe = subprocess.run([sys.executable, "-c", "import torch; print(torch.get_num_threads())"],
                           capture_output=True, text=True, env={**os.environ, **other})
    if int(probe.stdout) == threads:
        pytest.skip("this machine runs a single thread: no other count to resume with")
    code, _, stderr = _run([*TRAIN, "--resume"], out, env=other)
    assert code == 0, stderr
    assert f"made with {threads} threads" in stderr and "not be bit-identical" in stderr


@pytest.mark.parametrize("args, stage", [(SEARCH, "[stage1] "), (TRAIN, "")])
def test_a_diverging_run_stops_with_exit_3_and_no_genotype(tmp_path, args, stage):
    out = tmp_path / "nan"
    flag = "--w-lr" if args is SEARCH else "--lr"
    code, _, stderr = _run([*args, flag, "1e12"], out)
    lines = stderr.strip().splitlines()
    assert code == 3, stderr
    assert len(lines) == 1 and "Traceback" not in stderr
    assert lines[0].startswith(f"stacnas {args[0]}: error: {stage}epoch 1, step ") and "is not finite" in lines[0]
    results = ("genotype.json", "summary.json") if args is SEARCH else ("result.json", "model.pt")
    assert not any((out / name).exists() for name in results)
    step = int(lines[0].split("step ")[1].split(":")[0])
    kept = out / ("stage1" if args is SEARCH else "") / "checkpoint.pt"
    if step > 1:  # the last good step's checkpoint is kept
        assert torch.load(kept, weights_only=True)["step"] == step - 1


def test_a_corrupt_image_is_named(tmp_path):
    from PIL import Image

    root = tmp_path / "images"
    for split in ("train", "val"):
        for label in ("a", "b"):
            folder = root / split / label
            folder.mkdir(parents=True)
            for i in range(4):
                Image.new("RGB", (8, 8), (40 * i, 0, 200 if label == "a" else 0)).save(folder / f"{i}.png")
    (root / "train" / "b" / "2.png").write_bytes(b"not a png")
    code, _, stderr = _run(["train", "--dataset", "folder", "--data-root", str(root), "--image-size", "8", "--epochs",
                            "1", "--layers", "3", "--channels", "4", "--batch-size", "4", "--cutout", "0"],
                           tmp_path / "out")
    lines = stderr.strip().splitlines()
    assert code == 2 and len(lines) == 1 and "Traceback" not in stderr, stderr
    assert str(root / "train" / "b" / "2.png") in lines[0] and "not a readable image" in lines[0]
    shutil.rmtree(tmp_path / "out")


def test_a_checkpoint_is_never_missing_while_it_is_replaced(tmp_path, monkeypatch):
    """The moment between keeping the previous checkpoint and writing the new one (where a SIGKILL once left only
    checkpoint.prev.pt, which --resume refused): both names hold an intact checkpoint there, each a file of its own."""
    from stacnas import files
    from stacnas.runtime import checkpoint

    path = tmp_path / "checkpoint.pt"
    checkpoint.save({"step": 1}, path, "hash")

    def killed(obj, target):
        raise KeyboardInterrupt("killed")
    monkeypatch.setattr(files, "save_torch", killed)
    with pytest.raises(KeyboardInterrupt):
        checkpoint.save({"step": 2}, path, "hash")
    assert path.is_file() and checkpoint.previous(path).is_file()
    assert os.stat(path).st_ino != os.stat(checkpoint.previous(path)).st_ino
    assert checkpoint.restore(path, "cpu", "hash")["step"] == 1
