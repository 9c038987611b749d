"""Checkpoints that a resumed run can continue from exactly, and trust.

A checkpoint holds plain tensors, numbers, strings and containers only (read back with weights_only=True): the
state_dicts of the model, optimizers and schedules, the RNG states (torch CPU and CUDA, Python's random), where the
run stood (epoch, step, the sums of the epoch so far), and to tell whether it can be trusted: its format version, the
hash of the configuration that made it, the thread count it ran with and a SHA-256 digest of all its content. It is
written atomically (stacnas.files) and the one before it is kept, so a torn or damaged file falls back to that one.
"""
from __future__ import annotations

import hashlib
import random
from pathlib import Path

import torch

from .. import files
from ..errors import UsageError, warn

FORMAT = 1


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


def read(path: Path, map_location="cpu"):
    """A torch file of stacnas' (weights, a checkpoint), read with weights_only=True; errors name the file."""
    path = Path(path)
    if not path.is_file():
        raise UsageError(f"no checkpoint at {path}")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:  # a damaged or foreign file: say which, not a traceback
        raise UsageError(f"{path} is not a readable stacnas checkpoint ({type(err).__name__}: "
                         f"{str(err).splitlines()[0] if str(err) else 'no detail'})") from None


def _digest(obj, h) -> None:
    """Feed obj's content into the hash h, in a fixed order: what a checkpoint's digest is computed over."""
    if isinstance(obj, torch.Tensor):
        t = obj.detach().cpu().contiguous().reshape(-1)
        h.update(f"tensor {t.dtype} {tuple(obj.shape)}".encode())
        h.update(t.view(torch.uint8).numpy().tobytes())
    elif isinstance(obj, dict):
        h.update(f"dict {len(obj)}".encode())
        for key in sorted(obj, key=repr):
            h.update(repr(key).encode())
            _digest(obj[key], h)
    elif isinstance(obj, (list, tuple)):  # one kind: a checkpoint's tuples come back as lists
        h.update(f"sequence {len(obj)}".encode())
        for item in obj:
            _digest(item, h)
    else:
        h.update(repr(obj).encode())


def digest(state: dict) -> str:
    h = hashlib.sha256()
    _digest(state, h)
    return h.hexdigest()


def previous(path: Path) -> Path:
    return path.with_name(path.stem + ".prev" + path.suffix)


def save(state: dict, path: Path, config_hash: str) -> None:
    """Write a checkpoint; the one it replaces is kept as <name>.prev.pt. `path` never goes missing: the current one
    is first copied to the previous one's name (a file of its own, so damage to one leaves the other), then replaced,
    each atomically, so a kill at any moment leaves an intact checkpoint under each name that exists."""
    path = Path(path)
    state = {**state, "format": FORMAT, "config_hash": config_hash, "threads": torch.get_num_threads()}
    state["sha256"] = digest(state)
    if path.is_file():
        files.write_bytes(previous(path), path.read_bytes())
    files.save_torch(state, path)


def _verified(path: Path, map_location, config_hash: str) -> dict:
    state = read(path, map_location)
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise UsageError(f"{path} is not a stacnas checkpoint of format {FORMAT}")
    if state.get("config_hash") != config_hash:
        raise UsageError(f"{path} was made by another configuration")
    content = {k: v for k, v in state.items() if k != "sha256"}
    if digest(content) != state.get("sha256"):
        raise UsageError(f"{path} is damaged (its content does not match its SHA-256 digest)")
    return state


def restore(path: Path, map_location, config_hash: str) -> dict | None:
    """The newest intact checkpoint of this configuration: `path`, else the one before it (with a warning); None when
    neither exists."""
    path = Path(path)
    candidates = [p for p in (path, previous(path)) if p.is_file()]
    for i, candidate in enumerate(candidates):
        try:
            state = _verified(candidate, map_location, config_hash)
        except UsageError as err:
            warn(f"{err}; " + ("trying the one before it" if i + 1 < len(candidates) else "starting over"))
            continue
        if candidate != path:
            warn(f"resuming from the previous checkpoint {candidate}")
        if state["threads"] != torch.get_num_threads():
            warn(f"{candidate} was made with {state['threads']} threads, this process has "
                 f"{torch.get_num_threads()}: the resumed run will not be bit-identical to an uninterrupted one")
        return state
    return None


def remove(path: Path) -> None:
    """Remove a checkpoint and the one before it (a finished run needs neither): the previous one first, so that a
    kill in between leaves the newest."""
    for p in (previous(Path(path)), Path(path)):
        p.unlink(missing_ok=True)
