"""A progress bar for long loops, drawn only on an interactive terminal (quiet in logs and under CI)."""
from __future__ import annotations

import sys
import time


class Progress:
    def __init__(self, total: int, desc: str, enabled: bool = True, stream=None):
        self.stream = stream or sys.stderr
        self.enabled = enabled and hasattr(self.stream, "isatty") and self.stream.isatty()
        self.total, self.desc, self.done, self.start = total, desc, 0, time.time()

    def update(self, n: int = 1, **info) -> None:
        self.done += n
        if not self.enabled:
            return
        width = 24
        filled = int(width * self.done / max(self.total, 1))
        rate = self.done / max(time.time() - self.start, 1e-9)
        extra = " ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in info.items())
        self.stream.write(f"\r{self.desc} [{'#' * filled}{'.' * (width - filled)}] {self.done}/{self.total} "
                          f"{rate:.1f} it/s {extra}\033[K")
        self.stream.flush()

    def close(self) -> None:
        if self.enabled:
            self.stream.write("\r\033[K")
            self.stream.flush()
