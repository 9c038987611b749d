"""Checkpoints that a resumed run can continue from exactly, read back with weights_only=True.

A checkpoint holds plain tensors, numbers, strings and containers only: state_dicts of the model and the
optimizers and schedulers, the RNG states (torch CPU and CUDA, Python's random) and where the run stood
(epoch, step). It is written to a temporary file first and renamed, so an interruption never leaves half a file.
"""
from __future__ import annotations

import os
import random
from pathlib import Path

import torch


def rng_state() -> dict:
    state = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(_as_python_random_state(state["python"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _as_python_random_state(state):
    version, internal, gauss = state  # lists after a round trip through the checkpoint: random wants tuples
    return version, tuple(internal), gauss


def save(state: dict, path: Path) -> None:
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


def load(path: Path, map_location="cpu") -> dict:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:  # a damaged or foreign file: say which, not a traceback
        raise ValueError(f"{path} is not a readable stacnas checkpoint ({type(err).__name__}: "
                         f"{str(err).splitlines()[0] if str(err) else 'no detail'})") from None
