"""The fused mixed sum against the memory-bound floor: (K+1)·N elements moved forward, compared with the device's
measured copy bandwidth, for each backend available, side by side in one run.

    python benchmarks/kernel_bandwidth.py [--elements 67108864] [--k 7] [--out FILE.json]
"""
import argparse
import json
import statistics
import time

import torch

from stacnas import fused


def _time(fn, device, repeats):
    if device.type == "cuda":
        import triton.testing

        return triton.testing.do_bench(fn, warmup=5, rep=max(20, repeats * 5), quantiles=[0.5])[0] / 1e3
    fn()
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - start)
    return statistics.median(samples)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--elements", type=int, default=64 * 2**20, help="elements per input (default 64M)")
    parser.add_argument("--k", type=int, default=7, help="inputs summed (default 7: a DARTS edge without none)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    device = torch.device(args.device)
    C = 64
    shape = (args.elements // (C * 256), C, 16, 16)
    xs = [torch.randn(shape, device=device) for _ in range(args.k)]
    w = torch.randn(args.k, device=device)
    normalize = [k % 2 == 0 for k in range(args.k)]
    n_bytes = xs[0].numel() * xs[0].element_size()
    src, dst = torch.empty_like(xs[0]), torch.empty_like(xs[0])
    copy_s = _time(lambda: dst.copy_(src), device, args.repeats)
    copy_bw = 2 * n_bytes / copy_s
    results = {"copy": {"seconds": copy_s, "bytes_per_second": copy_bw}}
    backends = ["reference"] + (["cuda"] if device.type == "cuda" and fused.cuda_kernels_built() else []) \
        + (["cpp"] if device.type == "cpu" and fused.extension_error() is None else []) \
        + (["triton"] if fused.triton_usable(device) is None and device.type == "cuda" else [])
    for plain in (True, False):
        flags = [False] * args.k if plain else normalize
        for backend in backends:
            seconds = _time(lambda: fused.mixed_sum(xs, w, flags, backend=backend), device, args.repeats)
            floor_bytes = (args.k + 1) * n_bytes  # each input read once, y written once (statistics add reads)
            results[f"{backend}{'' if plain else '+bn'}"] = {
                "seconds": seconds, "bytes_per_second": floor_bytes / seconds,
                "fraction_of_copy_bandwidth": floor_bytes / seconds / copy_bw}
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(f"mixed sum of {args.k} inputs x {xs[0].numel():,} elements on {name}; copy bandwidth "
          f"{copy_bw / 1e9:.0f} GB/s")
    for key, r in results.items():
        if key != "copy":
            print(f"  {key:<14} {r['seconds'] * 1e3:8.2f} ms  {r['bytes_per_second'] / 1e9:7.0f} GB/s  "
                  f"{100 * r['fraction_of_copy_bandwidth']:5.1f} % of copy")
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"device": name, "elements": xs[0].numel(), "k": args.k, "results": results}, f, indent=2)


if __name__ == "__main__":
    main()
