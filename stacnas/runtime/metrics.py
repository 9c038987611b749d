"""A run's metrics.jsonl: one JSON line per epoch (and stage), printed as one log line too, trimmed on resume to
what the checkpoints cover; and the peak memory every record carries."""
from __future__ import annotations

import json
import resource
from pathlib import Path

import torch

from .. import files
from ..errors import warn
from . import tensorboard


class MetricsLog:
    def __init__(self, path: Path, enabled: bool = True, tensorboard: Path | None = None,
                 edge_ops: dict | None = None):
        self.path, self.enabled = Path(path), enabled  # enabled: this process writes (rank 0)
        self.tensorboard, self.edge_ops = tensorboard, edge_ops  # see runtime.tensorboard.log_record

    def log(self, record: dict, details: str) -> None:
        """Append the record (and give it to TensorBoard); print "[stage] epoch e/E: <details> (seconds)"."""
        if not self.enabled:
            return
        files.append_line(self.path, json.dumps(record))
        if self.tensorboard is not None:
            tensorboard.log_record(self.tensorboard, record, self.edge_ops)
        prefix = f"[{record['stage']}] " if "stage" in record else ""
        print(f"{prefix}epoch {record['epoch']}/{record['epochs']}: {details} ({record['seconds']:.1f}s)", flush=True)

    def trim(self, stage: str | None, epochs_done: int) -> None:
        """Drop the lines of `stage` (None: lines without a stage) past `epochs_done`: a resumed run logs them again.
        A line torn by a kill while it was written is dropped too, with a warning."""
        if not self.enabled or not self.path.is_file():
            return
        keep = []
        for number, line in enumerate(self.path.read_text(errors="replace").splitlines(), 1):
            try:
                record = json.loads(line)
                if record.get("stage") != stage or record["epoch"] <= epochs_done:
                    keep.append(line)
            except (ValueError, KeyError, AttributeError):
                warn(f"{self.path}, line {number}: not a whole metrics record (torn by an interruption?); dropped")
        files.write_text(self.path, "".join(line + "\n" for line in keep))


def peak_memory() -> dict:
    """Peak resident memory of this process (and peak CUDA memory allocated, when CUDA was used), in MiB."""
    mem = {"peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        mem["peak_cuda_mib"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
    return mem
