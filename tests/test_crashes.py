"""Crashes and interruptions, as a preempted machine deals them: SIGKILL at chosen moments of a file's write (a torn
temporary file, one not yet renamed, between keeping the previous checkpoint and replacing the current, just after;
in both search stages and in final training), SIGTERM and SIGINT, a truncated or damaged checkpoint, a torn metrics line, a stale folder reused
with --force. Each run, resumed, ends bit-identical to the uninterrupted one, or ends in a clear refusal. A run whose
loss diverges stops with exit 3 and writes no genotype; a corrupt image is named. A full disk or an unwritable folder
at any write ends in one line and exit 4, the previous files intact and no temporary file left; running out of memory
in one line and exit 5; neither leaves a folder that needs --force."""
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

SEARCH = ["search", "--preset", "quick", "--epochs", "2", "--limit", "96", "--batch-size", "16", "--channels", "4",
          "--stage1-layers", "3", "--stage2-layers", "4", "--checkpoint-every", "1", "--no-report", "--seed", "5"]
TRAIN = ["train", "--preset", "quick", "--epochs", "3", "--limit", "96", "--batch-size", "16", "--layers", "3",
         "--channels", "4", "--checkpoint-every", "1", "--cutout", "0", "--no-report", "--seed", "5"]
VOLATILE = {"seconds", "peak_rss_mib", "peak_cuda_mib"}  # what differs between identical runs


def _start(args, out, env=None):
    return subprocess.Popen([sys.executable, "-m", "stacnas", *args, "--out", str(out)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env={**os.environ, **(env or {})})


def _run(args, out, env=None):
    process = _start(args, out, env)
    stdout, stderr = process.communicate(timeout=600)
    return process.returncode, stdout, stderr


AT_A_WRITE = """
import errno, os, signal, sys
import stacnas.files as files
target, nth, moment, sig = sys.argv[1], int(sys.argv[2]), sys.argv[3], getattr(signal, sys.argv[4])
seen = 0
def chosen(path):
    global seen
    hit = files.Path(path).as_posix().endswith(target)
    seen += hit
    return hit and seen == nth
def signal_self():
    os.kill(os.getpid(), sig)
write_file, write_bytes, append_line = files._write_file, files.write_bytes, files.append_line
def part_written(tmp, data):  # torn: half the temporary file written; unrenamed: all of it, not renamed
    if chosen(tmp.with_name(tmp.name[1:-len(".tmp")])):
        if moment == "torn" or moment.startswith("E"):
            tmp.write_bytes(data[: len(data) // 2])
            if moment.startswith("E"):  # ENOSPC, EACCES, ...: the write fails half way
                code = getattr(errno, moment)
                raise OSError(code, os.strerror(code))
            signal_self()
        write_file(tmp, data)
        signal_self()
    write_file(tmp, data)
def then_signal(write):  # written: the file in place (a metrics line appended)
    def wrapped(path, data):
        write(path, data)
        if chosen(path):
            signal_self()
    return wrapped
if moment == "written":
    files.write_bytes, files.append_line = then_signal(write_bytes), then_signal(append_line)
else:
    files._write_file = part_written
from stacnas.cli import main
sys.exit(main(sys.argv[5:]))
"""


def _at_a_write(args, out, target, nth, moment, sig=signal.SIGKILL):
    """Run the command and send it `sig` at a chosen moment of its nth write of the file whose path ends in
    `target`: 'torn' (half the temporary file written), 'unrenamed' (all of it, not yet renamed) or 'written' (in
    place; for metrics.jsonl: the line appended); or let that write fail half way with an errno ('ENOSPC', ...).
    Its exit code and stderr."""
    process = subprocess.run([sys.executable, "-c", AT_A_WRITE, target, str(nth), moment, sig.name, *args, "--out",
                              str(out)], capture_output=True, text=True, timeout=600)
    return process.returncode, process.stderr


def _killed_at(args, out, target, nth, moment):
    code, stderr = _at_a_write(args, out, target, nth, moment)
    assert code == -signal.SIGKILL, f"the run was not killed at that moment: {stderr}"


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


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The uninterrupted runs."""
    root = tmp_path_factory.mktemp("reference")
    for args, name in ((SEARCH, "search"), (TRAIN, "train")):
        code, _, stderr = _run(args, root / name)
        assert code == 0, stderr
    return {"search": _search_outcome(root / "search"), "train": _train_outcome(root / "train")}


# the moments a SIGKILL can leave a run in: a torn temporary file, a whole one not yet renamed, between keeping the
# previous checkpoint and replacing the current one (checkpoint.prev.pt just written), a checkpoint just written, a
# metrics record appended and its epoch's checkpoint not yet written
@pytest.mark.parametrize("target, nth, moment", [("stage1/checkpoint.pt", 2, "torn"),
                                                 ("stage1/checkpoint.pt", 3, "unrenamed"),
                                                 ("stage1/checkpoint.prev.pt", 2, "written"),
                                                 ("stage2/checkpoint.pt", 2, "written")])
def test_sigkill_during_a_search_then_resume(tmp_path, reference, target, nth, moment):
    out = tmp_path / "cut"
    _killed_at(SEARCH, out, target, nth, moment)
    code, _, stderr = _run([*SEARCH, "--resume"], out)
    assert code == 0, stderr
    _assert_same(_search_outcome(out), reference["search"])


@pytest.mark.parametrize("target, nth, moment", [("cut/checkpoint.pt", 2, "torn"),
                                                 ("cut/checkpoint.prev.pt", 2, "written"),
                                                 ("cut/metrics.jsonl", 1, "written")])
def test_sigkill_during_training_then_resume(tmp_path, reference, target, nth, moment):
    out = tmp_path / "cut"
    _killed_at(TRAIN, out, target, nth, moment)
    code, _, stderr = _run([*TRAIN, "--resume"], out)
    assert code == 0, stderr
    _assert_same(_train_outcome(out), reference["train"])


@pytest.mark.parametrize("args, kind, sig, code", [(SEARCH, "search", signal.SIGTERM, 143),
                                                   (TRAIN, "train", signal.SIGINT, 130)])
def test_sigterm_and_sigint_checkpoint_the_step_and_stop(tmp_path, reference, args, kind, sig, code):
    out = tmp_path / "cut"
    where = ("stage1", "checkpoint.pt") if kind == "search" else ("checkpoint.pt",)
    returned, stderr = _at_a_write(args, out, "/".join(("cut", *where)), 2, "written", sig)  # handled at the step
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
    _killed_at(SEARCH, out, "stage1/checkpoint.pt", 3, "written")  # checkpoint.prev.pt holds the one before
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
    _killed_at(SEARCH, out, "stage2/checkpoint.pt", 1, "written")
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
    _killed_at([*SEARCH, "--force"], out, "stage1/checkpoint.pt", 1, "written")
    assert not (out / "stage2").exists()  # --force removed the stale run's files first
    code, _, stderr = _run([*SEARCH, "--resume"], out)
    assert code == 0, stderr
    _assert_same(_search_outcome(out), reference["search"])


def test_resume_with_another_config_is_refused(tmp_path):
    out = tmp_path / "cut"
    _killed_at(SEARCH, out, "stage1/checkpoint.pt", 1, "written")
    before = sorted(p.name for p in out.rglob("*"))
    code, _, stderr = _run([*SEARCH[:-1], "6", "--resume"], out)
    assert code == 2 and "options differ" in stderr and "seed" in stderr
    assert sorted(p.name for p in out.rglob("*")) == before


def test_another_thread_count_on_resume_is_warned(tmp_path):
    out = tmp_path / "cut"
    _killed_at(TRAIN, out, "cut/checkpoint.pt", 1, "written")
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
    assert list((tmp_path / "out").iterdir()) == []  # nothing left behind: the corrected run needs no --force


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


# ---- a full disk, an unwritable folder, memory ------------------------------------------------------------------

@pytest.mark.parametrize("args, kind", [(SEARCH, "search"), (TRAIN, "train")])
def test_a_full_disk_while_checkpointing_is_one_line_and_resumes(tmp_path, reference, args, kind):
    out = tmp_path / kind
    code, stderr = _at_a_write(args, out, "checkpoint.pt", 3, "ENOSPC")
    lines = stderr.strip().splitlines()
    assert code == 4 and "Traceback" not in stderr, stderr
    assert lines[-1].startswith(f"stacnas {kind}: error: no space left on device writing ") and "MiB free" in lines[-1]
    assert "checkpoint.pt" in lines[-1] and "free space, then run the same command again" in lines[-1]
    assert not list(out.rglob("*.tmp")), "the half-written temporary file is left, holding the disk's last bytes"
    assert list(out.rglob("checkpoint.pt")), "the previous checkpoint is gone"
    code, _, stderr = _run([*args, "--resume"], out)
    assert code == 0, stderr
    outcome = _search_outcome if kind == "search" else _train_outcome
    _assert_same(outcome(out), reference[kind])


@pytest.mark.parametrize("name, nth, errno_name, message", [
    ("config.json", 1, "ENOSPC", "no space left on device writing "),
    ("clusters.json", 1, "EROFS", "Read-only file system writing "),
    ("report.html", 1, "EACCES", "Permission denied writing "),
])
def test_a_failed_write_anywhere_in_a_search_is_one_line(tmp_path, name, nth, errno_name, message):
    out = tmp_path / "run"
    code, stderr = _at_a_write([*SEARCH, "--report"], out, name, nth, errno_name)
    lines = stderr.strip().splitlines()
    assert code == 4 and "Traceback" not in stderr, stderr
    assert lines[-1].startswith("stacnas search: error: " + message) and name in lines[-1], lines[-1]
    assert not list(out.rglob("*.tmp")) and not (out / name).exists()


def test_a_full_disk_at_the_benchmark_s_file_is_one_line(tmp_path):
    code, stderr = _at_a_write(["bench", "supernet", "--channels", "4", "--layers", "3", "--image-size", "8",
                                "--batch-size", "2", "--repeats", "1", "--no-peak-rss"], tmp_path / "r.json", "r.json", 1,
                               "ENOSPC")
    assert code == 4 and "Traceback" not in stderr and "no space left on device writing" in stderr, stderr
    assert not list(tmp_path.iterdir())


def test_running_out_of_memory_is_one_line_and_leaves_nothing(tmp_path):
    out = tmp_path / "run"
    code, _, stderr = _run([*SEARCH, "--channels", "400000"], out)
    lines = stderr.strip().splitlines()
    assert code == 5 and "Traceback" not in stderr, stderr
    assert lines[-1].startswith("stacnas search: error: out of CPU memory: a tensor of ") and "GiB" in lines[-1]
    assert "--batch-size" in lines[-1] and "--memory-mode recompute" in lines[-1]
    assert not out.exists() or list(out.iterdir()) == []


def test_write_failures_keep_the_old_file_and_name_the_new_one(tmp_path, monkeypatch):
    import errno

    from stacnas import files
    from stacnas.errors import StorageError

    path = tmp_path / "a.json"
    files.write_text(path, "old")

    def full(tmp, data):
        tmp.write_bytes(data[:1])
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(files, "_write_file", full)
    with pytest.raises(StorageError, match=f"no space left on device writing {path} "):
        files.write_text(path, "new")
    assert path.read_text() == "old" and sorted(p.name for p in tmp_path.iterdir()) == ["a.json"]
    monkeypatch.undo()
    with pytest.raises(StorageError, match="writing .*missing/metrics.jsonl"):
        files.append_line(tmp_path / "missing" / "metrics.jsonl", "{}")
    with pytest.raises(StorageError, match="making the folder .*a.json/sub"):
        files.make_folder(path / "sub")


def test_the_benchmark_does_not_overwrite_its_file(tmp_path):
    from stacnas.cli import main

    out = tmp_path / "r.json"
    out.write_text("saved")
    assert main(["bench", "supernet", "--out", str(out)]) == 2  # refused before it runs
    assert out.read_text() == "saved"
