"""The drop-in for DARTS-family code: `use_fused_mixed_ops(model)` gives the mixed edges and search cells of a model
written with DARTS, RobustDARTS, P-DARTS, PC-DARTS, AutoDL-Projects, NASLib or NNI (stacnas.nn.peers) a fused
forward, in place, and nothing else changes:

    report = stacnas.nn.use_fused_mixed_ops(model)            # lean; mode="recompute" keeps even less
    print(report)                                             # what was fused, what was left and why

The modules stay the same objects with the same attributes, methods, parameter names and state_dict keys: each one's
class becomes a subclass of its own (same name) whose fused methods compute the same numbers as the original ones,
with less memory kept for backward. copy.deepcopy keeps a module fused; pickling it (torch.save of a whole model)
saves the original class. DataParallel replicas, DDP, .to(), .double(), train() and eval() behave as on the original.

The first-use check (check=True, the default): each fused module's first call (and its first call with gradients)
also runs, on a float64 copy of the module and random inputs of the call's shapes, the module's own method and the
fused one, and compares outputs, gradients of every input and parameter, and BN running statistics. A mismatch
warns once, naming the module, and gives it back its own methods. Structures stacnas does not know are left as they
are, and the report says why.
"""
from __future__ import annotations

import contextlib
import copy
import copyreg
import functools
import threading
import warnings
from dataclasses import dataclass, field

import torch
import torch.nn as nn

from ..names import DEFAULT_MEMORY_MODE
from . import peers, recognize
from .mixed_op import MixedOp
from .modes import check_mode
from .supernet import Supernet

STATE = "_stacnas_dropin"  # the attribute a fused module's state is kept in
CHECK_BATCH = 4  # the first-use check's random inputs hold at most this many samples
_lock = threading.Lock()  # DataParallel replicas share one state: one of them checks
_local = threading.local()


@dataclass
class _State:
    name: str  # the module's name in the model, for messages
    peer: str  # stacnas.nn.peers.BY_KEY
    fusion: peers.Fusion
    unchecked: set = field(default_factory=set)  # "values", "gradients": what the first-use check has still to see


@dataclass
class DropInReport:
    """What use_fused_mixed_ops did: the modules fused (name → structure), those left as they are (name → why), and
    per structure what of its modules runs as it is (structure → note)."""
    mode: str
    fused: dict = field(default_factory=dict)
    left: dict = field(default_factory=dict)
    notes: dict = field(default_factory=dict)

    def __str__(self) -> str:
        counts = {}
        for structure in self.fused.values():
            counts[structure] = counts.get(structure, 0) + 1
        lines = [f"use_fused_mixed_ops ({self.mode}): fused {len(self.fused)} modules"
                 + "".join(f"\n  {n} × {s}" for s, n in counts.items())]
        lines += [f"  note: {s}: {note}" for s, note in self.notes.items()]
        lines.append(f"left as they are: {len(self.left)}" + "".join(f"\n  {name}: {why}"
                                                                     for name, why in self.left.items()))
        return "\n".join(lines)


def use_fused_mixed_ops(model: nn.Module, mode: str = DEFAULT_MEMORY_MODE, kernels: str | None = None,
                        check: bool = True) -> DropInReport:
    """Fuse, in place, every mixed edge and search cell of `model` built like one of stacnas.nn.peers (and set the
    mode of stacnas' own MixedOps and Supernets). mode `reference` gives every fused module its own methods back.
    kernels: the fused ops' backend (None: STACNAS_KERNELS or automatic). check: the first-use check (module
    docstring). Warns when nothing was fused."""
    mode = check_mode(mode)
    report = DropInReport(mode)
    plan = []
    _survey(model, "", plan, report, kernels, set())
    for name, module, peer in plan:  # everything was surveyed first: nothing is left half done
        _unfuse(module)
        recognize.forget(module)
        if mode != "reference":
            _fuse(module, name, peer, peers.Fusion(mode, kernels), check)
            report.fused[name] = peer.name
            if peer.left_alone:
                report.notes[peer.name] = peer.left_alone
    if not report.fused and mode != "reference":
        why = "; ".join(f"{n}: {w}" for n, w in list(report.left.items())[:3]) or \
            "no module of it is built like a structure stacnas knows (docs/dropin.md lists them)"
        warnings.warn(f"use_fused_mixed_ops fused nothing in {type(model).__name__}: {why}", stacklevel=2)
    return report


def _survey(module, name, plan, report, kernels, seen):
    """Find what to fuse (plan), what stacnas' own modules are (set their mode now) and what is left, and why."""
    if id(module) in seen:
        return
    seen.add(id(module))
    label = name or "(the model)"
    if isinstance(module, (Supernet, MixedOp)):
        module.set_mode(report.mode, kernels)
        report.fused[label] = f"stacnas {type(module).__name__}"
        return
    state = module.__dict__.get(STATE)
    peer = peers.BY_KEY[state.peer] if state is not None else peers.find_peer(module)
    if peer is not None:
        problem = peer.problem(module)
        if problem is None:
            plan.append((label, module, peer))
        else:
            report.left[label] = f"{type(module).__name__} ({peer.name}): {problem}"
        if not peer.cell:
            return  # an edge: what it holds are its candidates
    elif peers.looks_mixed(module):
        report.left[label] = peers.KNOWN_UNSUPPORTED.get(
            type(module).__name__, f"{type(module).__name__} is not a structure stacnas knows (docs/dropin.md lists "
                                   "them); it runs as it is")
    for child_name, child in module.named_children():
        _survey(child, f"{name}.{child_name}" if name else child_name, plan, report, kernels, seen)


# ---- the fused class ----------------------------------------------------------------------------------------------

_CLASSES: dict = {}


def _fused_class(base: type, peer: peers.Peer) -> type:
    """base's fused subclass: the same name, its peer's methods fused, pickled as base."""
    if (base, peer.key) not in _CLASSES:
        namespace = {"__module__": base.__module__, "__qualname__": base.__qualname__, "__doc__": base.__doc__,
                     "_stacnas_base": base, "__reduce_ex__": _reduce_as_base, "__deepcopy__": _deepcopy}
        for method in peer.methods:
            if callable(getattr(base, method, None)):  # a version of the codebase may lack one (forward_joint)
                namespace[method] = _fused_method(method, getattr(base, method))
        _CLASSES[base, peer.key] = type(base)(base.__name__, (base,), namespace)  # base's metaclass (NASLib: ABCMeta)
    return _CLASSES[base, peer.key]


def _fused_method(name: str, original):
    @functools.wraps(original)
    def method(self, *args, **kwargs):
        return _call(self, name, args, kwargs)
    return method


def _reduce_as_base(self, protocol):
    """Pickling saves the module as its own class, unfused (after loading, call use_fused_mixed_ops again), with the
    standard library's reconstructor: loading it needs no stacnas."""
    state = {k: v for k, v in self.__dict__.items() if k != STATE}
    return copyreg._reconstructor, (type(self)._stacnas_base, object, None), state


def _deepcopy(self, memo):
    copied = type(self).__new__(type(self))
    memo[id(self)] = copied
    copied.__setstate__(copy.deepcopy(self.__dict__, memo))
    return copied


def _fuse(module, name, peer, fusion, check):
    module.__class__ = _fused_class(type(module), peer)
    module.__dict__[STATE] = _State(name, peer.key, fusion, {"values", "gradients"} if check else set())


def _unfuse(module):
    if STATE in module.__dict__:
        del module.__dict__[STATE]
        module.__class__ = type(module)._stacnas_base


@contextlib.contextmanager
def originals():
    """Fused modules run their own methods within (this thread)."""
    before = getattr(_local, "originals", False)
    _local.originals = True
    try:
        yield
    finally:
        _local.originals = before


def _call(module, name, args, kwargs):
    original = getattr(type(module)._stacnas_base, name)
    state = module.__dict__.get(STATE)
    if state is None or getattr(_local, "originals", False):
        return original(module, *args, **kwargs)
    peer = peers.BY_KEY[state.peer]
    if state.unchecked and not torch.compiler.is_compiling():
        mismatch = _first_use_check(module, state, peer, name, args, kwargs)
        if mismatch is not None:
            _unfuse(module)
            warnings.warn(f"stacnas: the fused {name} of {state.name} ({peer.name}) {mismatch}; it runs its own "
                          f"{name} from now on", stacklevel=3)
            return original(module, *args, **kwargs)
    out = getattr(peer, name)(module, state.fusion, *args, **kwargs)
    return original(module, *args, **kwargs) if out is peers.NOT_APPLICABLE else out


# ---- the first-use check --------------------------------------------------------------------------------------------

TOLERANCE = 1e-9  # relative, in float64; rounding alone stays below 1e-13 here


def _first_use_check(module, state, peer, name, args, kwargs) -> str | None:
    """None when the fused method equals the module's own on random float64 inputs of this call's shapes (or there
    is nothing left to check), else what differs."""
    kind = "gradients" if torch.is_grad_enabled() else "values"
    with _lock:
        if kind not in state.unchecked:
            return None
        state.unchecked -= {kind, "values"}
    try:
        found = _compare(module, state, peer, name, args, kwargs, kind == "gradients")
    except Exception as e:  # noqa: BLE001 — anything raised by either method means: not shown equal
        return f"could not be checked against the original ({type(e).__name__}: {e})"
    if found is peers.NOT_APPLICABLE:  # this call runs the original anyway: check a later one
        with _lock:
            state.unchecked.add(kind)
        return None
    return found


def _random_like(t, generator):
    """Random float64 values for a floating tensor of a call (an image batch cut to CHECK_BATCH samples); other
    values as they are."""
    if not isinstance(t, torch.Tensor) or not t.is_floating_point():
        return t
    shape = list(t.shape)
    if t.dim() == 4:
        shape[0] = min(shape[0], CHECK_BATCH)
    r = torch.randn(shape, generator=generator, dtype=torch.float64).to(t.device)
    return r.requires_grad_(t.requires_grad and torch.is_grad_enabled())


def _compare(module, state, peer, name, args, kwargs, gradients: bool):
    generator = torch.Generator().manual_seed(0)
    copy64 = copy.deepcopy(module).double()
    args = [_random_like(a, generator) for a in args]
    kwargs = {k: _random_like(v, generator) for k, v in kwargs.items()}
    inputs = [a for a in [*args, *kwargs.values()] if isinstance(a, torch.Tensor) and a.requires_grad]
    params = [p for p in copy64.parameters() if p.requires_grad] if gradients else []
    start = [b.clone() for b in copy64.buffers()]
    device = next((a.device for a in inputs), None) or next((b.device for b in start), torch.device("cpu"))
    rng = torch.get_rng_state(), (torch.cuda.get_rng_state(device) if device.type == "cuda" else None)
    upstream = []

    def run(method):
        with torch.no_grad():
            for b, b0 in zip(copy64.buffers(), start):
                b.copy_(b0)
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []), \
                torch.autocast(device.type, enabled=False):
            torch.set_rng_state(rng[0])
            if rng[1] is not None:
                torch.cuda.set_rng_state(rng[1], device)
            out = method()
            if out is peers.NOT_APPLICABLE:
                return out
            outs = [o for o in (out if isinstance(out, (tuple, list)) else [out]) if isinstance(o, torch.Tensor)]
            grads = []
            if gradients and inputs + params:
                if not upstream:
                    upstream.extend(torch.randn(o.shape, generator=generator, dtype=o.dtype).to(o.device)
                                    for o in outs)
                grads = torch.autograd.grad(outs, inputs + params, upstream, allow_unused=True)
        return [o.detach() for o in outs], list(grads), [b.clone() for b in copy64.buffers()]

    ours = run(lambda: getattr(peer, name)(copy64, state.fusion, *args, **kwargs))
    if ours is peers.NOT_APPLICABLE:
        return ours
    with originals():
        theirs = run(lambda: getattr(type(copy64)._stacnas_base, name)(copy64, *args, **kwargs))
    names = {id(p): n for n, p in copy64.named_parameters()}
    labels = ([f"output {i}" for i in range(len(ours[0]))],
              [f"the gradient of argument {i}" for i in range(len(inputs))]
              + [f"the gradient of {names[id(p)]}" for p in params],
              [f"buffer {n}" for n, _ in copy64.named_buffers()])
    for found, expected, label in zip(ours, theirs, labels):
        if len(found) != len(expected):
            return f"gives {len(found)} results where the original gives {len(expected)}"
        scale = max([t.norm().item() for t in expected if t is not None and t.is_floating_point()], default=0.0)
        for a, b, what in zip(found, expected, label):
            if (difference := _difference(a, b, scale)) is not None:
                return f"differs from the original in {what} ({difference})"
    return None


def _difference(a, b, scale: float) -> str | None:
    """Why a (fused) is not b (original) to float64 rounding, or None. A gradient autograd leaves unset is zero."""
    if a is None and b is None:
        return None
    a = torch.zeros_like(b) if a is None else a
    b = torch.zeros_like(a) if b is None else b
    if a.shape != b.shape:
        return f"shape {tuple(a.shape)} instead of {tuple(b.shape)}"
    if not b.is_floating_point():
        return None if torch.equal(a, b) else "different values"
    error = (a - b).norm().item()
    if error <= TOLERANCE * (b.norm().item() + 1e-3 * scale):
        return None
    return f"relative error {error / max(b.norm().item(), 1e-300):.1e}"
