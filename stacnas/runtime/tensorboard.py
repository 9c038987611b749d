"""Optional TensorBoard logging (`--tensorboard`, into <out>/tensorboard): every number of each metrics record as a
scalar when it is logged, a search's α per edge and op, and (stacnas.report) the run's figures at its end."""
from __future__ import annotations

import contextlib
from pathlib import Path

from ..errors import UsageError
from ..files import storage_error
from ..spaces import edge_endpoints, state_name

INSTALL = "pip install tensorboard"
_writers: dict = {}  # folder -> this process' writer: one events file per run and process


def check_available() -> None:
    try:
        from torch.utils.tensorboard import SummaryWriter  # noqa: F401
    except ImportError:
        raise UsageError(f"--tensorboard needs the tensorboard package: {INSTALL}") from None


def writer(folder: Path):
    folder = Path(folder).resolve()
    if folder not in _writers:
        from torch.utils.tensorboard import SummaryWriter

        with writing(folder):
            _writers[folder] = SummaryWriter(str(folder))
    return _writers[folder]


@contextlib.contextmanager
def writing(folder: Path):
    """A full disk or an unwritable folder while TensorBoard writes (its writer raises on flush what its thread
    met) as stacnas' StorageError."""
    try:
        yield
    except OSError as err:
        raise storage_error(err, f"writing TensorBoard events into {folder}", folder) from None


def log_record(folder: Path, record: dict, edge_ops: dict | None) -> None:
    """Scalars '<stage>/<field>' (a training: '<field>') at step = epoch; with `edge_ops` ({cell type: ops of each
    edge}), α's softmax as 'alpha_<stage>_<cell type>/<input>→<node>/<op>'."""
    w, stage, step = writer(folder), record.get("stage"), record["epoch"]
    prefix = f"{stage}/" if stage else ""
    for key, value in record.items():
        if isinstance(value, (int, float)) and not isinstance(value, bool) and key not in ("epoch", "epochs"):
            w.add_scalar(prefix + key, value, step)
    for cell_type, rows in record.get("alpha_softmax", {}).items() if edge_ops else ():
        for (inp, node), row, ops in zip(edge_endpoints(len(rows)), rows, edge_ops[cell_type]):
            for op, weight in zip(ops, row):
                w.add_scalar(f"alpha_{stage}_{cell_type}/{state_name(inp)}→{node}/{op}", weight, step)
    with writing(folder):
        w.flush()
