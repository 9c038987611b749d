"""Run configurations: a dataclass per command, filled from a preset, then a YAML file, then command-line flags.

Every field becomes a flag (`--w-lr 0.05`), shown under its group in --help; `help` metadata documents it. The
resolved configuration is saved next to a run's outputs.
"""
from __future__ import annotations

import argparse
import dataclasses
import math
from pathlib import Path

import yaml

from ..errors import UsageError
from ..files import read_text

PRESET_DIR = Path(__file__).resolve().parent.parent / "presets"


_BOUNDS = {"at_least": (lambda v, b: v >= b, "at least"), "above": (lambda v, b: v > b, "above"),
           "at_most": (lambda v, b: v <= b, "at most"), "below": (lambda v, b: v < b, "below")}
SEED_MAX = 2**63 - 1  # torch.manual_seed's largest


def option(default, help, group: str, **meta):
    """A configuration field: its default, its --help text, the --help group it is listed in, argparse extras
    (choices, type, nargs), bounds (at_least, above, at_most, below) that check() enforces, and flag=False for a
    field set only by a preset or --config."""
    return dataclasses.field(default=default, metadata={"help": help, "group": group, **meta})


def flag_name(name: str) -> str:
    return name.replace("_", "-")


def _expected_type(f: dataclasses.Field):
    default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
    return f.metadata.get("type", type(default)), default


def _checked_value(name: str, kind, value):
    """value as the field's type (an int where a float is expected becomes a float), else a UsageError."""
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    words = {int: "an integer", float: "a number", str: "a text", bool: "true or false"}
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise UsageError(f"{flag_name(name)} must be {words.get(kind, kind.__name__)}, got {value!r}")
    if kind is float and not math.isfinite(value):
        raise UsageError(f"{flag_name(name)} must be a finite number, got {value!r}")
    return value


def check(config) -> None:
    """Every field of a configuration dataclass has its type, one of its choices, and lies within its bounds."""
    for f in dataclasses.fields(config):
        kind, default = _expected_type(f)
        value = getattr(config, f.name)
        if value is None and default is None:
            continue
        if isinstance(default, tuple):
            if not isinstance(value, (tuple, list)) or not value or (
                    f.metadata.get("nargs") is None and len(value) != len(default)):
                size = "one or more values" if f.metadata.get("nargs") else f"{len(default)} values"
                raise UsageError(f"{flag_name(f.name)} must be a list of {size}, got {value!r}")
            values = tuple(_checked_value(f.name, type(default[0]), v) for v in value)
        else:
            values = (_checked_value(f.name, kind, value),)
        setattr(config, f.name, values if isinstance(default, tuple) else values[0])
        choices = f.metadata.get("choices")
        for v in values:
            if choices is not None and v not in choices:
                raise UsageError(f"{flag_name(f.name)} must be one of {', '.join(map(str, choices))}, got {v!r}")
            for key, (holds, words) in _BOUNDS.items():
                if key in f.metadata and not holds(v, f.metadata[key]):
                    raise UsageError(f"{flag_name(f.name)} must be {words} {f.metadata[key]}, got {v!r}")


def presets(command: str) -> list[str]:
    return sorted(p.stem[len(command) + 1:] for p in PRESET_DIR.glob(f"{command}-*.yaml"))


def _read_yaml(path: Path, what: str) -> dict:
    text = read_text(path, what)
    try:
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as err:
        raise UsageError(f"{what} {path}: not valid YAML: {str(err).splitlines()[0]}") from None
    if not isinstance(data, dict):
        raise UsageError(f"{what} {path}: expected a mapping of option: value")
    return data


def _apply(config, values: dict, source: str):
    names = {f.name for f in dataclasses.fields(config)}
    for key, value in values.items():
        name = str(key).replace("-", "_")
        if name not in names:
            raise UsageError(f"{source}: unknown option {key!r}; see --help for the options")
        setattr(config, name, tuple(value) if isinstance(value, list) else value)
    return config


def resolve(cls, command: str, preset: str | None, config_file: str | None, overrides: dict):
    """cls() ← presets/<command>-<preset>.yaml ← config_file ← overrides (flags given on the command line)."""
    config = cls()
    if preset is not None:
        path = PRESET_DIR / f"{command}-{preset}.yaml"
        if not path.is_file():
            raise UsageError(f"unknown preset {preset!r}; choose one of {', '.join(presets(command))}")
        _apply(config, _read_yaml(path, "preset"), f"preset {preset}")
    if config_file is not None:
        _apply(config, _read_yaml(Path(config_file), "config file"), f"config file {config_file}")
    _apply(config, {k: v for k, v in overrides.items() if v is not None}, "command line")
    config.validate()
    return config


def add_arguments(parser: argparse.ArgumentParser, cls) -> list[str]:
    """One flag per field of cls, in --help groups, default None so that only given flags override. Returns the
    field names."""
    groups, names = {}, []
    for f in dataclasses.fields(cls):
        if f.metadata.get("flag") is False:  # set in a preset or --config only (a mapping, say)
            continue
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
