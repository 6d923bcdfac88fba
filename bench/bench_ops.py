"""Time each compiled operator at the shapes dse_ext.dse gives it, forward and backward, per device.

    python bench/bench_ops.py                     # CPU, and CUDA when a GPU and CUDA kernels are present
    python bench/bench_ops.py --devices cuda --sizes 64x196x384 256x196x384 1024x196x384
    python bench/bench_ops.py --devices cpu --sizes 8x16x32 --repeats 1     # a quick check of the script

Shapes for B×N×d features: local css (B problems of N tokens, k = 3), global css (B/8 groups of
8·N tokens, k = 24), per-position effective rank (N matrices of B rows, through an index), the
pooled effective rank (one B·N × d matrix) and the nearest-other distances of the global groups.
Labels are random (k-means is not timed here). Operators without a kernel for a device are skipped.
On CUDA the last column is the peak GPU memory of one forward + backward call
(``torch.cuda.max_memory_allocated`` above what was allocated before it: the inputs are excluded).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

import dse_ext  # noqa: F401  (loads the operators)


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, device, repeats):
    fn()
    sync(device)
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def peak_mb(fn, device):
    """Peak memory of one call above what was allocated before it (CUDA); None on the CPU."""
    if device.type != "cuda":
        return None
    sync(device)
    torch.cuda.reset_peak_memory_stats(device)
    base = torch.cuda.memory_allocated(device)
    fn()
    sync(device)
    return (torch.cuda.max_memory_allocated(device) - base) / 2**20


def cases(B, N, d, device, g):
    x = torch.nn.functional.normalize(torch.randn(B, N, d, generator=g), dim=-1).to(device)
    G = max(1, B // 8)
    xg = x.reshape(G, -1, d)
    perm = torch.rand(B, N, generator=g).argsort(dim=1)
    rows = (perm + N * torch.arange(B)[:, None]).t().contiguous().to(device)
    local = torch.randint(0, 3, (B, N), generator=g).to(device)
    glob = torch.randint(0, 24, (G, xg.shape[1]), generator=g).to(device)
    cent = torch.randn(G, 24, d, generator=g).to(device)
    op = torch.ops.dse
    yield "css local", "cluster_css", lambda t: op.cluster_css(t, local, 3)[0], x
    yield "css global", "cluster_css", lambda t: op.cluster_css(t, glob, 24)[0], xg
    yield "erank per position", "effective_rank", lambda t: op.effective_rank(t.reshape(-1, d), rows)[0], x
    yield "erank pooled", "effective_rank", lambda t: op.effective_rank(t.reshape(1, -1, d))[0], x
    yield "nearest other", "nearest_other_centroid_distance", \
        lambda t: op.nearest_other_centroid_distance(t, cent, glob, None), xg


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", "--size", nargs="+", default=["64x196x384"], help="BxNxd sizes")
    parser.add_argument("--devices", nargs="+", default=None)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    devices = args.devices or (["cpu"] + (["cuda"] if torch.cuda.is_available() else []))
    gpu = f", {torch.cuda.get_device_name()}" if "cuda" in devices else ""
    print(f"# dse_ext operators — torch {torch.__version__}{gpu}, build {dse_ext.build_info()}, "
          f"{time.strftime('%Y-%m-%d')}; median of {args.repeats} calls after a warm-up\n")
    print("| B×N×d | device | operator | forward (ms) | forward + backward (ms) | fwd+bwd peak GPU MB |")
    print("|---|---|---|---:|---:|---:|")
    for size in args.sizes:
        B, N, d = (int(v) for v in size.lower().split("x"))
        for name in devices:
            device = torch.device(name)
            key = {"cpu": "CPU", "cuda": "CUDA"}[device.type]
            for label, op_name, fn, x in cases(B, N, d, device, torch.Generator().manual_seed(0)):
                if not torch._C._dispatch_has_kernel_for_dispatch_key(f"dse::{op_name}", key):
                    print(f"| {size} | {name} | {label} | – | – | – |")
                    continue
                forward = timed(lambda: fn(x), device, args.repeats)
                xr = x.detach().clone().requires_grad_(True)

                def step():
                    fn(xr).sum().backward()
                    xr.grad = None

                both = timed(step, device, args.repeats)
                peak = peak_mb(step, device)
                peak_s = "–" if peak is None else f"{peak:.0f}"
                print(f"| {size} | {name} | {label} | {forward * 1e3:.2f} | {both * 1e3:.2f} | {peak_s} |", flush=True)
            del x, xr
            if device.type == "cuda":
                torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
