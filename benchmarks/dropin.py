"""The drop-in on each DARTS-family codebase's search network: the original model, and the same model after
stacnas.nn.use_fused_mixed_ops in lean and in recompute mode, side by side in one run.

    python benchmarks/dropin.py [--batch-size 8] [--repeats 5] [--device cpu] [--codebases darts pcdarts ...]
                                [--amp none|bf16|fp16] [--tiny] [--out benchmarks/results/dropin-cpu-2core.json]

Per codebase: the bytes autograd keeps for backward per sample (saved_tensors_hooks, each storage once; measured
after a first step, so the first-use check is not counted), the median step time (forward + backward) and their
ratios to the original's (medians of per-round ratios: the three models take turns). The networks are the ones the
tests check (tests/peer_networks), each at its codebase's search configuration, 32×32 inputs, 10 classes; with
--amp the forward passes run under autocast (as `stacnas bench supernet --amp`).
"""
import argparse
import copy
import json
import os
import statistics
import sys
import time

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests"))

import peer_networks  # noqa: E402
import stacnas.nn  # noqa: E402
from peer_networks import autodl_darts, autodl_nb201, darts, naslib, nni, pcdarts, pdarts, robustdarts  # noqa: E402
from stacnas import files  # noqa: E402
from stacnas.bench.supernet import machine, round_ratio, saved_bytes  # noqa: E402
from stacnas.runtime.precision import DTYPES, autocast, check_amp  # noqa: E402

# name: (network module, build arguments: each codebase's search configuration)
CODEBASES = {
    "darts": (darts, {"C": 16, "layers": 8}),
    "robustdarts-s1": (robustdarts, {"space": "s1", "C": 16, "layers": 8}),
    "robustdarts-s2": (robustdarts, {"space": "s2", "C": 16, "layers": 8}),
    "robustdarts-s3": (robustdarts, {"space": "s3", "C": 16, "layers": 8}),
    "robustdarts-s4": (robustdarts, {"space": "s4", "C": 16, "layers": 8}),
    "pdarts-stage1": (pdarts, {"stage": 1, "C": 16, "layers": 5, "p": 0.1}),
    "pdarts-stage2": (pdarts, {"stage": 2, "C": 16, "layers": 11, "p": 0.4}),
    "pdarts-stage3": (pdarts, {"stage": 3, "C": 16, "layers": 17, "p": 0.7}),
    "pcdarts": (pcdarts, {"C": 16, "layers": 8}),
    "nas-bench-201": (autodl_nb201, {"C": 16, "N": 5}),
    "autodl-darts": (autodl_darts, {"C": 16, "N": 2}),
    "naslib": (naslib, {"C": 16, "layers": 8}),
    "nni": (nni, {"C": 16, "layers": 8}),
}
# --tiny: the same networks at about the smallest size they build at (a smoke test: gpu_check.sh --dry-run)
TINY = {"C": 8, "layers": 3, "N": 1}


def _arguments(name: str, tiny: bool) -> dict:
    kwargs = CODEBASES[name][1]
    return {k: TINY.get(k, v) for k, v in kwargs.items()} if tiny else kwargs


MODELS = ("original", "lean", "recompute")


def _loss(model, x, y, amp="none"):
    with autocast(amp, x.device):
        logits = peer_networks.logits(model(x))
    return F.cross_entropy(logits.float(), y)


def _step(model, x, y, amp="none"):
    model.zero_grad(set_to_none=True)
    _loss(model, x, y, amp).backward()
    if x.device.type == "cuda":
        torch.cuda.synchronize(x.device)


def measure(name: str, batch: int, repeats: int, device, tiny: bool = False, amp: str = "none") -> dict:
    kwargs = _arguments(name, tiny)
    torch.manual_seed(0)
    original = CODEBASES[name][0].build(**kwargs).to(device)
    models = {"original": original}
    for mode in MODELS[1:]:
        models[mode] = copy.deepcopy(original)
        report = stacnas.nn.use_fused_mixed_ops(models[mode], mode)
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(batch, 3, 32, 32, generator=generator).to(device)
    y = torch.randint(0, 10, (batch,), generator=generator).to(device)
    results = {}
    for key, model in models.items():
        _step(model, x, y, amp)  # the first-use check runs here
        nbytes, loss = saved_bytes(lambda: _loss(model, x, y, amp))
        loss.backward()
        results[key] = {"saved_bytes_per_sample": nbytes / batch, "step_seconds_all": []}
    for _ in range(repeats):
        for key, model in models.items():
            start = time.perf_counter()
            _step(model, x, y, amp)
            results[key]["step_seconds_all"].append(time.perf_counter() - start)
    for key, r in results.items():
        r["step_seconds_median"] = statistics.median(r["step_seconds_all"])
        r["saved_bytes_ratio"] = r["saved_bytes_per_sample"] / results["original"]["saved_bytes_per_sample"]
        r["step_time_ratio"] = round_ratio(r, results["original"])
    return {"build": kwargs, "fused": len(report.fused), "left": len(report.left), "results": results}


def render(report: dict) -> str:
    lines = [f"drop-in benchmark on {report['machine']['device']} ({report['config']['threads']} threads), 32x32, "
             f"batch {report['config']['batch_size']}, amp {report['config'].get('amp', 'none')}",
             f"{'codebase':<16} {'fused':>5} {'original MiB/sample':>19} {'lean':>6} {'recompute':>9} "
             f"{'original step s':>15} {'lean':>6} {'recompute':>9}"]
    for name, found in report["codebases"].items():
        r = found["results"]
        lines.append(f"{name:<16} {found['fused']:>5} {r['original']['saved_bytes_per_sample'] / 2**20:>19.1f} "
                     f"{r['lean']['saved_bytes_ratio']:>6.3f} {r['recompute']['saved_bytes_ratio']:>9.3f} "
                     f"{r['original']['step_seconds_median']:>15.3f} {r['lean']['step_time_ratio']:>6.2f} "
                     f"{r['recompute']['step_time_ratio']:>9.2f}")
    lines.append("lean and recompute: ratios to the original (saved bytes; step time, median of per-round ratios)")
    return "\n".join(lines)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=5, help="timed rounds after the first step")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=0, help="CPU threads (0: torch's default)")
    parser.add_argument("--codebases", nargs="+", choices=list(CODEBASES), default=list(CODEBASES))
    parser.add_argument("--amp", choices=["none", *DTYPES], default="none",
                        help="run the forward passes under autocast (fp16 on CUDA only)")
    parser.add_argument("--tiny", action="store_true", help="the networks at about their smallest (a smoke test)")
    parser.add_argument("--out", help="write the results as JSON here")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    check_amp(args.amp, device)
    report = {"config": {"batch_size": args.batch_size, "repeats": args.repeats, "threads": torch.get_num_threads(),
                         "device": str(device), "tiny": args.tiny, "amp": args.amp},
              "machine": machine(device), "codebases": {}}
    for name in args.codebases:
        report["codebases"][name] = measure(name, args.batch_size, args.repeats, device, args.tiny, args.amp)
        print(f"{name}: done", flush=True)
    print(render(report))
    if args.out:
        os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
        files.write_text(args.out, json.dumps(report, indent=2))
        print(f"written to {args.out}")
    return report


if __name__ == "__main__":
    main()
