"""A run's output folder: never overwritten silently, holding the configuration and environment of the run, and
checked before a run in it is resumed."""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from ..info import environment


def prepare_out_dir(out: str, force: bool) -> Path:
    """Refuse to write into a folder that already holds files, unless force is given."""
    path = Path(out)
    if path.exists() and not path.is_dir():
        raise FileExistsError(f"--out {out} is a file; choose a folder")
    if path.is_dir() and any(path.iterdir()) and not force:
        raise FileExistsError(f"--out {out} already holds files; choose another folder or add --force to overwrite")
    path.mkdir(parents=True, exist_ok=True)
    return path


def save_run_info(out: Path, config) -> None:
    (out / "config.json").write_text(json.dumps(dataclasses.asdict(config), indent=2) + "\n")
    (out / "environment.json").write_text(json.dumps(environment(), indent=2) + "\n")


def open_run_dir(out: str, config, force: bool, resume: bool, free: set[str], needs: tuple[str, ...]) -> Path:
    """Start a run in a new folder (config and environment saved), or check that `resume` may continue the one
    there: the files in `needs` exist and every option outside `free` (options that do not change the numbers)
    equals the saved config.json."""
    path = Path(out)
    if not resume:
        path = prepare_out_dir(out, force)
        save_run_info(path, config)
        return path
    missing = [name for name in ("config.json", *needs) if not (path / name).is_file()]
    if missing:
        raise ValueError(f"--resume: {out} holds no interrupted run to resume (no {', '.join(missing)}); "
                         "start it without --resume")
    saved = json.loads((path / "config.json").read_text())
    current = json.loads(json.dumps(dataclasses.asdict(config)))
    changed = [k for k, v in current.items() if k not in free and saved.get(k) != v]
    if changed:
        raise ValueError(f"--resume: options differ from the interrupted run's config.json ({', '.join(changed)}); "
                         "give the same options")
    return path
