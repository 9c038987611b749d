"""Search networks written here in the structures of the DARTS-family codebases people use, for the drop-in's tests
and benchmark: each module mirrors one codebase's class names, attribute layouts, forward signatures and what its
forwards compute (../shared/reference/dropin-peers.md), in code of our own.

    darts          quark0/darts cnn/model_search.py
    robustdarts    automl/RobustDARTS src/search/model_search.py (per-edge op lists, noise, drop-path)
    pdarts         chenxin061/pdarts model_search.py (switches, Dropout after skip, update_p)
    pcdarts        yuhuixu1993/PC-DARTS model_search.py (partial channels, channel shuffle, edge weights β)
    autodl_nb201   D-X-Y/AutoDL-Projects NAS201SearchCell and a DARTS-V1-style network over it
    autodl_darts   D-X-Y/AutoDL-Projects NASNetSearchCell, MixedOp.forward_darts, NASNetworkDARTS
    naslib         automl/NASLib DARTSMixedOp and primitives taking edge data
    nni            microsoft/nni DartsLayerChoice

Every network's `arch_parameters()` are its α (and β), each `build(seed)` its DARTS-search-like configuration.
"""

import torch


def to(net, *args, **kwargs):
    """net.to(...), the α it keeps as plain tensors outside its parameters (DARTS, PC-DARTS, RobustDARTS) moved too."""
    net = net.to(*args, **kwargs)
    for name, value in list(vars(net).items()):
        if isinstance(value, torch.Tensor) and not isinstance(value, torch.nn.Parameter):
            setattr(net, name, value.detach().to(*args, **kwargs).requires_grad_(value.requires_grad))
    return net


def double(net):
    return to(net, torch.float64)


def logits(out):
    """AutoDL-Projects' networks return (features, logits)."""
    return out[1] if isinstance(out, tuple) else out
