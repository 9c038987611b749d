"""Run configurations: a dataclass per command, filled from a preset, then a YAML file, then command-line flags.

Every field becomes a flag (`--w-lr 0.05`), shown under its group in --help; `help` metadata documents it. The
resolved configuration is saved next to a run's outputs.
"""
from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

import yaml

PRESET_DIR = Path(__file__).resolve().parent.parent / "presets"


def option(default, help, group: str, **meta):
    """A configuration field: its default, its --help text, the --help group it is listed in, and argparse extras
    (choices, type, nargs)."""
    return dataclasses.field(default=default, metadata={"help": help, "group": group, **meta})


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
    """One flag per field of cls, in --help groups, default None so that only given flags override. Returns the
    field names."""
    groups, names = {}, []
    for f in dataclasses.fields(cls):
        group = f.metadata["group"]
        if group not in groups:
            groups[group] = parser.add_argument_group(f"{group} options")
        flag = "--" + f.name.replace("_", "-")
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        help_text = f"{f.metadata.get('help', '')} (default: {default})"
        if isinstance(default, bool):
            groups[group].add_argument(flag, action=argparse.BooleanOptionalAction, default=None, help=help_text)
        elif isinstance(default, tuple):
            groups[group].add_argument(flag, type=type(default[0]), nargs=f.metadata.get("nargs", len(default)),
                                       default=None, choices=f.metadata.get("choices"), help=help_text)
        else:
            kind = f.metadata.get("type", type(default) if default is not None else str)
            groups[group].add_argument(flag, type=kind, default=None, choices=f.metadata.get("choices"),
                                       help=help_text)
        names.append(f.name)
    return names
