"""A trained network after training: read back from model.pt, evaluated on a dataset, exported for inference."""
from __future__ import annotations

import os
from pathlib import Path

import torch
import torch.nn as nn

from ..data import get_loaders
from ..errors import UsageError
from ..runtime import checkpoint, distributed
from .network import build_network
from .trainer import evaluate

EXPORT_FORMATS = ("export", "torchscript", "onnx")


def load_trained(path: str, device="cpu") -> tuple[nn.Module, dict]:
    """A network saved by `stacnas train` (model.pt), read with weights_only=True."""
    state = checkpoint.read(Path(path), map_location=device)
    if not isinstance(state, dict) or "arch" not in state or "model" not in state:
        raise UsageError(f"{path} is not a trained stacnas network (expected the model.pt that 'stacnas train' "
                         "writes)")
    net = build_network(state["arch"]).to(device)
    net.load_state_dict(state["model"])
    return net.eval(), state["arch"]


def _at_least(name: str, value, minimum: int) -> None:
    if type(value) is not int or value < minimum:
        raise UsageError(f"{name} must be an integer of at least {minimum}, got {value!r}")


def run_eval(path: str, dataset: str, data_root=None, batch_size=256, device="auto", limit=0, workers=0) -> dict:
    for name, value, minimum in (("batch-size", batch_size, 1), ("limit", limit, 0), ("workers", workers, 0)):
        _at_least(name, value, minimum)
    device = distributed.device_for(device)
    net, arch = load_trained(path, device)
    loaders = get_loaders(dataset, data_root, batch_size, augment=False, workers=workers,
                          image_size=arch["image_size"] if dataset in ("imagenet", "folder") else None,
                          limit=limit or None)
    info = loaders.info
    if (info.num_classes, info.in_channels) != (arch["num_classes"], arch["in_channels"]):
        raise UsageError(f"{path} was trained for {arch['num_classes']} classes of {arch['in_channels']}-channel "
                         f"images; {info.name} has {info.num_classes} classes of {info.in_channels}-channel images")
    result = evaluate(net, loaders.test, device)
    return {"checkpoint": str(path), "dataset": info.name, "test_top1": result["top1"], "test_top5": result["top5"],
            "test_loss": result["loss"], "images": len(loaders.test.dataset)}


class Inference(nn.Module):
    """The network as a plain image → logits function (what export and deployment want)."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, x):
        return self.net(x)[0]


def export(path: str, out: str, fmt: str = "export", batch_size: int = 1) -> Path:
    """Write a trained network for inference: torch.export (.pt2), TorchScript (.pt) or ONNX (.onnx)."""
    if fmt not in EXPORT_FORMATS:
        raise UsageError(f"unknown export format {fmt!r}; choose one of {', '.join(EXPORT_FORMATS)}")
    _at_least("batch-size", batch_size, 1)
    target = Path(out)
    if target.exists():
        raise UsageError(f"{target} already exists; choose another file name")
    if not target.parent.is_dir():
        raise UsageError(f"--out {target}: the folder {target.parent} does not exist")
    net, arch = load_trained(path)
    model = Inference(net).eval()
    example = torch.randn(batch_size, arch["in_channels"], arch["image_size"], arch["image_size"])
    tmp = target.with_name(f".{target.stem}.tmp{target.suffix}")  # renamed when complete: never half a file
    if fmt == "export":
        torch.export.save(torch.export.export(model, (example,)), str(tmp))
    elif fmt == "torchscript":
        with torch.no_grad():
            torch.jit.save(torch.jit.trace(model, example), str(tmp))
    else:
        try:
            torch.onnx.export(model, (example,), str(tmp), input_names=["images"], output_names=["logits"],
                              dynamo=True)
        except ImportError as err:
            raise UsageError(f"ONNX export needs the onnx and onnxscript packages ({err}); "
                             "pip install onnx onnxscript") from None
    os.replace(tmp, target)
    return target
