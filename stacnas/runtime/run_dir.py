"""A run's output folder: never overwritten silently, holding the configuration and environment of the run, checked
before a run in it is resumed, and telling which finished outputs belong to which configuration."""
from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import shutil
from pathlib import Path

from .. import files
from ..errors import UsageError, as_out_of_memory, warn
from ..info import environment

# What runs write into their folder: --force removes these (and only these) before a run starts over.
RUN_FILES = ("config.json", "environment.json", "metrics.jsonl", "genotype.json", "genotype.txt", "summary.json",
             "clusters.json", "result.json", "model.pt", "checkpoint.pt", "checkpoint.prev.pt", "report.html")
RUN_FOLDERS = ("cluster", "stage1", "stage2", "darts", "plots", "tensorboard")
STAGE_MARK = "stage.json"


def config_hash(config, free: set[str]) -> str:
    """A short hash of every option that changes the numbers (all but those in `free`)."""
    options = {k: v for k, v in dataclasses.asdict(config).items() if k not in free}
    return hashlib.sha256(json.dumps(options, sort_keys=True).encode()).hexdigest()[:16]


def check_out_dir(out: str, force: bool) -> Path:
    """Refuse a folder that already holds files, unless force is given; writes nothing."""
    path = Path(out)
    if path.exists() and not path.is_dir():
        raise UsageError(f"--out {out} is a file; choose a folder")
    if path.is_dir() and any(path.iterdir()) and not force:
        raise UsageError(f"--out {out} already holds files; choose another folder or add --force to overwrite")
    return path


def prepare_out_dir(out: str, force: bool) -> Path:
    """check_out_dir, then the folder made, and with force the previous run's files removed from it."""
    path = check_out_dir(out, force)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise UsageError(f"--out {out} cannot be made ({err.strerror or err})") from None
    if force:
        removed = _remove_run_files(path)
        if removed:
            warn(f"--force: removed {len(removed)} file(s) and folder(s) of the previous run in {out}")
    return path


def _remove_run_files(path: Path) -> list[Path]:
    """Remove what runs write into the folder `path` (and only that); the paths removed."""
    old = [path / n for n in RUN_FILES if (path / n).exists()] + \
          [path / n for n in RUN_FOLDERS if (path / n).is_dir()] + list(path.glob(".*.tmp"))
    for p in old:
        if p.is_dir():
            shutil.rmtree(p)
        else:
            p.unlink()
    return old


@contextlib.contextmanager
def clean_on_early_failure(out: Path, fresh: bool):
    """A fresh run (not resumed) that stops because the command itself must change — bad input found only while it
    runs (a corrupt image), or out of memory — before it saved anything to continue from (a checkpoint, a finished
    stage) leaves its folder as it found it, so the corrected command runs without --force. Out-of-memory errors
    leave as stacnas' one-line OutOfMemory."""
    try:
        yield
    except (UsageError, RuntimeError) as err:
        oom = None if isinstance(err, UsageError) else as_out_of_memory(err)
        if oom is None and not isinstance(err, UsageError):
            raise
        saved = any(out.rglob("checkpoint*.pt")) or any(out.rglob(STAGE_MARK))
        if fresh and not saved:
            _remove_run_files(out)
        if oom is not None:
            raise oom from None
        raise


def save_run_info(out: Path, config) -> None:
    files.write_text(out / "config.json", json.dumps(dataclasses.asdict(config), indent=2) + "\n")
    files.write_text(out / "environment.json", json.dumps(environment(), indent=2) + "\n")


def open_run_dir(out: str, config, force: bool, resume: bool, free: set[str], needs: tuple) -> Path:
    """Start a run in a new folder (config and environment saved), or check that `resume` may continue the one
    there: the files in `needs` exist (a tuple of names: one of them) and every option outside `free` (options that
    do not change the numbers) equals the saved config.json."""
    path = Path(out)
    if not resume:
        path = prepare_out_dir(out, force)
        save_run_info(path, config)
        return path
    missing = [name if isinstance(name, str) else " or ".join(name) for name in ("config.json", *needs)
               if not any((path / n).is_file() for n in ((name,) if isinstance(name, str) else name))]
    if missing:
        raise UsageError(f"--resume: {out} holds no interrupted run to resume (no {', '.join(missing)}); "
                         "start it without --resume")
    try:
        saved = json.loads(files.read_text(path / "config.json", "the interrupted run's"))
    except json.JSONDecodeError as err:
        raise UsageError(f"--resume: {path / 'config.json'} is not valid JSON ({err})") from None
    current = json.loads(json.dumps(dataclasses.asdict(config)))
    changed = [k for k, v in current.items() if k not in free and saved.get(k) != v]
    if changed:
        raise UsageError(f"--resume: options differ from the interrupted run's config.json ({', '.join(changed)}); "
                         "give the same options")
    return path


def _file_digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def mark_finished(folder: Path, config_hash: str, names: list[str]) -> None:
    """Record that `folder`'s outputs `names` are complete and made by the configuration `config_hash` (written
    last, atomically: a folder without it holds no finished outputs)."""
    mark = {"config_hash": config_hash, "files": {n: _file_digest(folder / n) for n in names}}
    files.write_text(folder / STAGE_MARK, json.dumps(mark, indent=2) + "\n")


def finished(folder: Path, config_hash: str) -> bool:
    """Whether `folder` holds complete outputs of the configuration `config_hash` (warns when it holds another's,
    or damaged ones: they are made again)."""
    mark_path = folder / STAGE_MARK
    if not mark_path.is_file():
        return False
    try:
        mark = json.loads(mark_path.read_text())
        intact = all(_file_digest(folder / n) == digest for n, digest in mark["files"].items())
    except (OSError, ValueError, KeyError, TypeError):
        intact = False
    if not intact:
        warn(f"{folder} holds damaged outputs; making them again")
    elif mark["config_hash"] != config_hash:
        warn(f"{folder} holds the outputs of another configuration; making them again")
    return intact and mark["config_hash"] == config_hash
