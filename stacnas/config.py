"""Run configurations: a dataclass per command, filled from a preset, then a YAML file, then command-line flags.

Every field becomes a flag (`--w-lr 0.05`); `help` metadata documents it. The resolved configuration is saved
next to a run's outputs.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import platform
from pathlib import Path

import yaml

PRESET_DIR = Path(__file__).parent / "presets"


def option(default, help, **meta):
    """A configuration field: its default, its --help text and argparse extras (choices, type)."""
    return dataclasses.field(default=default, metadata={"help": help, **meta})


def presets(command: str) -> list[str]:
    return sorted(p.stem.split("-", 1)[1] for p in PRESET_DIR.glob(f"{command}-*.yaml"))


def _read_yaml(path: Path, what: str) -> dict:
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise ValueError(f"{what} {path}: not valid YAML: {str(err).splitlines()[0]}") from None
    if not isinstance(data, dict):
        raise ValueError(f"{what} {path}: expected a mapping of option: value")
    return data


def _apply(config, values: dict, source: str):
    names = {f.name for f in dataclasses.fields(config)}
    for key, value in values.items():
        name = key.replace("-", "_")
        if name not in names:
            raise ValueError(f"{source}: unknown option {key!r}; see --help for the options")
        setattr(config, name, tuple(value) if isinstance(value, list) else value)
    return config


def resolve(cls, command: str, preset: str | None, config_file: str | None, overrides: dict):
    """cls() ← presets/<command>-<preset>.yaml ← config_file ← overrides (flags given on the command line)."""
    config = cls()
    if preset is not None:
        path = PRESET_DIR / f"{command}-{preset}.yaml"
        if not path.is_file():
            raise ValueError(f"unknown preset {preset!r}; choose one of {', '.join(presets(command))}")
        _apply(config, _read_yaml(path, "preset"), f"preset {preset}")
    if config_file is not None:
        path = Path(config_file)
        if not path.is_file():
            raise ValueError(f"config file {config_file} does not exist")
        _apply(config, _read_yaml(path, "config file"), f"config file {config_file}")
    _apply(config, {k: v for k, v in overrides.items() if v is not None}, "command line")
    if hasattr(config, "validate"):
        config.validate()
    return config


def add_arguments(parser: argparse.ArgumentParser, cls) -> list[str]:
    """One flag per field of cls, default None so that only given flags override. Returns the field names."""
    names = []
    for f in dataclasses.fields(cls):
        flag = "--" + f.name.replace("_", "-")
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        help_text = f"{f.metadata.get('help', '')} (default: {default})"
        if isinstance(default, bool):
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=None, help=help_text)
        elif isinstance(default, tuple):
            parser.add_argument(flag, type=type(default[0]), nargs=len(default), default=None, help=help_text)
        else:
            kind = f.metadata.get("type", type(default) if default is not None else str)
            parser.add_argument(flag, type=kind, default=None, choices=f.metadata.get("choices"), help=help_text)
        names.append(f.name)
    return names


def environment() -> dict:
    from . import info

    data = info.collect()
    data["platform"] = platform.platform()
    return data


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
