"""The supernet benchmark: the same DARTS supernet in each memory mode, side by side in one run.

For each mode: bytes saved for backward per sample (counted with saved_tensors_hooks, each storage once), the
median forward+backward step time, the peak resident memory during a step, and on CUDA the peak allocated memory
and the largest batch that fits a memory budget. Ratios are against `reference`.
"""
from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass, replace

import torch
import torch.nn.functional as F

from .. import files, fused
from ..errors import UsageError
from ..names import AMP_MODES, KERNEL_CHOICES, MEMORY_MODES
from ..nn import Supernet
from ..runtime.config import SEED_MAX, check, option
from ..runtime.distributed import device_for
from ..runtime.precision import autocast, check_amp
from ..spaces import load_space


def saved_bytes(step) -> tuple[int, object]:
    """(bytes that autograd keeps for backward while `step()` builds its graph, each storage counted once; what
    step() returned)."""
    storages = {}

    def pack(t):
        storage = t.untyped_storage()
        storages[(storage.data_ptr(), str(t.device))] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = step()
    return sum(storages.values()), out


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class _PeakRSS:
    """Polls the resident set size in a thread while the block runs (Linux). Freed memory is rarely returned to the
    system, so each mode is measured in a fresh process (peak_rss)."""

    def __enter__(self):
        self.peak, self._stop = _rss_bytes(), threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)
        self._thread.start()
        return self

    def _poll(self):
        while not self._stop.wait(0.002):
            self.peak = max(self.peak, _rss_bytes())

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, _rss_bytes())


@dataclass
class BenchConfig:
    space: str = option("darts", "search space", "supernet")
    channels: int = option(16, "initial channels C", "supernet", at_least=1)
    layers: int = option(8, "cells", "supernet", at_least=3)
    image_size: int = option(32, "input height and width", "supernet", at_least=1)
    num_classes: int = option(10, "classes", "supernet", at_least=1)
    batch_size: int = option(16, "batch of the timed steps", "measurement", at_least=2)
    repeats: int = option(7, "timed steps per mode after the warm-up", "measurement", at_least=1)
    warmup: int = option(1, "untimed steps per mode first", "measurement", at_least=0)
    modes: tuple = option(MEMORY_MODES, "memory modes to compare", "measurement", nargs="+",
                          choices=list(MEMORY_MODES))
    kernels: str = option("auto", "backend of the fused ops", "measurement", choices=list(KERNEL_CHOICES))
    peak_rss: bool = option(True, "measure each mode's peak resident memory, each in a fresh process (seconds per "
                                  "mode)", "measurement")
    budget_gib: float = option(16.0, "on CUDA, report the largest batch whose peak memory fits this budget",
                               "measurement", above=0.0)
    seed: int = option(0, "seed of the weights, α and the batch", "measurement", at_least=0, at_most=SEED_MAX)
    amp: str = option("none", "run the forward passes under autocast: none, bf16 or fp16 (fp16 on CUDA only)", "run",
                      choices=list(AMP_MODES))
    device: str = option("auto", "cpu, cuda or auto", "run")
    threads: int = option(0, "CPU threads (0: torch's default)", "run", at_least=0)

    def validate(self):
        check(self)


def _model(cfg: BenchConfig, mode: str, device) -> Supernet:
    torch.manual_seed(cfg.seed)  # the same weights and α in every mode
    return Supernet(load_space(cfg.space), C=cfg.channels, layers=cfg.layers, num_classes=cfg.num_classes,
                    mode=mode, kernels=cfg.kernels).to(device)


def _batch(cfg, batch, device):
    g = torch.Generator().manual_seed(cfg.seed)
    x = torch.randn(batch, 3, cfg.image_size, cfg.image_size, generator=g)
    return x.to(device), torch.randint(0, cfg.num_classes, (batch,), generator=g).to(device)


def _loss(model, x, y, amp: str):
    with autocast(amp, x.device):
        logits = model(x)
    return F.cross_entropy(logits.float(), y)


def _step(model, x, y, amp: str):
    model.zero_grad(set_to_none=True)
    _loss(model, x, y, amp).backward()


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _cuda_peak(model, cfg, batch, device) -> int:
    x, y = _batch(cfg, batch, device)
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats(device)
    _step(model, x, y, cfg.amp)
    _sync(device)
    return torch.cuda.max_memory_allocated(device)


def peak_rss(cfg: BenchConfig, mode: str) -> int:
    """Peak resident bytes of a fresh process that builds the supernet in `mode` and runs two steps."""
    config = json.dumps({**asdict(cfg), "modes": [mode]})
    code = ("import json, sys; from stacnas.bench.supernet import BenchConfig, _rss_child; "
            "print(_rss_child(BenchConfig(**json.loads(sys.argv[1]))))")
    result = subprocess.run([sys.executable, "-c", code, config], capture_output=True, text=True, check=True)
    return int(result.stdout.strip().splitlines()[-1])


def _rss_child(cfg: BenchConfig) -> int:
    device = device_for(cfg.device)
    torch.set_num_threads(cfg.threads)
    model = _model(cfg, cfg.modes[0], device)
    x, y = _batch(cfg, cfg.batch_size, device)
    with _PeakRSS() as rss:
        for _ in range(2):
            _step(model, x, y, cfg.amp)
            _sync(device)
    return rss.peak


def run(cfg: BenchConfig) -> dict:
    device = device_for(cfg.device)
    torch.set_num_threads(cfg.threads)
    fused.resolve_backend(cfg.kernels, device)  # fail now on a backend that cannot run here
    check_amp(cfg.amp, device)
    models = {mode: _model(cfg, mode, device) for mode in cfg.modes}
    x, y = _batch(cfg, cfg.batch_size, device)
    results = {}
    for mode, model in models.items():
        nbytes, loss = saved_bytes(lambda: _loss(model, x, y, cfg.amp))
        loss.backward()
        results[mode] = {"saved_bytes_per_sample": nbytes / cfg.batch_size}
    times = {mode: [] for mode in models}
    for i in range(cfg.warmup + cfg.repeats):  # round robin, so machine noise hits every mode alike
        for mode, model in models.items():
            _sync(device)
            start = time.perf_counter()
            _step(model, x, y, cfg.amp)
            _sync(device)
            if i >= cfg.warmup:
                times[mode].append(time.perf_counter() - start)
    for mode, model in models.items():
        if cfg.peak_rss:
            results[mode]["peak_rss_mib"] = peak_rss(cfg, mode) / 2**20
        results[mode]["step_seconds_median"] = statistics.median(times[mode])
        results[mode]["step_seconds_all"] = times[mode]
        if device.type == "cuda":
            small, large = _cuda_peak(model, cfg, cfg.batch_size // 2, device), _cuda_peak(model, cfg,
                                                                                             cfg.batch_size, device)
            per_sample = (large - small) / (cfg.batch_size - cfg.batch_size // 2)
            fixed = large - per_sample * cfg.batch_size
            results[mode]["peak_cuda_mib"] = large / 2**20
            results[mode]["max_batch_in_budget"] = int((cfg.budget_gib * 2**30 - fixed) // per_sample)
    if "reference" in results:
        ref = results["reference"]
        for mode, r in results.items():
            r["saved_bytes_ratio"] = r["saved_bytes_per_sample"] / ref["saved_bytes_per_sample"]
            # the median of per-round ratios: a burst of machine noise slows every mode of its round alike
            r["step_time_ratio"] = round_ratio(r, ref)
    if "lean" in results and "recompute" in results:
        results["recompute"]["step_time_ratio_to_lean"] = round_ratio(results["recompute"], results["lean"])
    return {"config": asdict(cfg), "machine": machine(device), "results": results}


def round_ratio(result: dict, base: dict) -> float:
    """The median over rounds of result's step time over base's (the two timed in the same round)."""
    return statistics.median(t / t_base for t, t_base in zip(result["step_seconds_all"], base["step_seconds_all"]))


def machine(device) -> dict:
    """What a benchmark ran on: the device, cores, torch, platform and date."""
    return {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or
            platform.machine(), "cpu_count": os.cpu_count(), "torch": torch.__version__,
            "platform": platform.platform(), "date": time.strftime("%Y-%m-%d")}


def render(report: dict) -> str:
    cuda = any("peak_cuda_mib" in r for r in report["results"].values())
    head = f"{'mode':<10} {'saved MiB/sample':>16} {'ratio':>6} {'step s':>8} {'ratio':>6} {'peak RSS MiB':>12}"
    if cuda:
        head += f" {'peak CUDA MiB':>13} {'max batch':>9}"
    lines = [f"supernet benchmark on {report['machine']['device']} ({report['config']['threads']} threads), "
             f"C={report['config']['channels']}, {report['config']['layers']} cells, "
             f"{report['config']['image_size']}x{report['config']['image_size']}, "
             f"batch {report['config']['batch_size']}"
             + (f", autocast {report['config']['amp']}" if report['config'].get('amp', 'none') != 'none' else ""),
             head]
    for mode, r in report["results"].items():
        line = (f"{mode:<10} {r['saved_bytes_per_sample'] / 2**20:>16.1f} {r.get('saved_bytes_ratio', 1):>6.3f} "
                f"{r['step_seconds_median']:>8.3f} {r.get('step_time_ratio', 1):>6.2f} "
                + (f"{r['peak_rss_mib']:>12.0f}" if "peak_rss_mib" in r else f"{'-':>12}"))
        if cuda:
            line += f" {r['peak_cuda_mib']:>13.0f} {r['max_batch_in_budget']:>9d}"
        lines.append(line)
    if "step_time_ratio_to_lean" in report["results"].get("recompute", {}):
        lines.append(f"recompute step / lean step: {report['results']['recompute']['step_time_ratio_to_lean']:.2f} "
                     "(ratios: medians of per-round ratios)")
    return "\n".join(lines)


def check_out(out: str | None, force: bool) -> None:
    """Before the benchmark runs: --out must be a file name, and an existing file is replaced only with force."""
    if out and os.path.isdir(out):
        raise UsageError(f"--out {out} is a folder; give the JSON file's name")
    if out and os.path.exists(out) and not force:
        raise UsageError(f"--out {out} already exists; choose another file or add --force to overwrite it")


def main(cfg: BenchConfig, out: str | None, force: bool = False) -> dict:
    check_out(out, force)
    report = run(replace(cfg, threads=cfg.threads or torch.get_num_threads()))
    print(render(report))
    if out:
        files.make_folder(os.path.dirname(out) or ".")
        files.write_text(out, json.dumps(report, indent=2))
        print(f"written to {out}")
    return report
