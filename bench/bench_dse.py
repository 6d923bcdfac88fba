"""Benchmark dse_ext.dse: compiled ops vs the pure-PyTorch reference.

Prints a markdown table per device: wall time (median of repeats), speed-up, the
extra peak resident memory of a call (CPU) or the peak GPU memory of the process
(CUDA: ``torch.cuda.max_memory_allocated``, the input features included), and an
arithmetic floor: the FLOPs the metric cannot avoid divided by GEMM rates measured
on this machine. Each (size, backend) runs in a fresh process so peak memory is its own.
Where a target is set (TARGETS: CUDA at 1024×196×384) a line under the row says whether
it is met.

    python bench/bench_dse.py                       # default sizes, CPU (+ CUDA if present)
    python bench/bench_dse.py --sizes 64x196x384 --repeats 5
    python bench/bench_dse.py --devices cuda --no-reference --sizes 64x196x384 256x196x384 1024x196x384
    python bench/bench_dse.py --devices cpu --sizes 8x16x32 --repeats 1      # a quick check of the script
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import resource
import statistics
import subprocess
import sys
import time

DEFAULT_SIZES = ["16x196x384", "64x196x384", "256x196x384", "64x784x768"]
PAPER_SECONDS = {("cpu", "64x196x384"): 0.9}  # the released implementation, 2 CPU cores (issue #2)
# (device, size) -> (milliseconds, peak MB) the compiled backend should stay within (issue #11).
TARGETS = {("cuda", "1024x196x384"): (20.0, 4096.0)}


def parse_size(s: str) -> tuple[int, int, int]:
    """``"BxNxd"`` (e.g. ``64x196x384``) as three positive ints."""
    parts = s.lower().split("x")
    if len(parts) != 3 or not all(p.isdigit() and int(p) > 0 for p in parts):
        raise argparse.ArgumentTypeError(f"sizes are BxNxd with three positive ints, e.g. 64x196x384; got {s!r}")
    b, n, d = (int(v) for v in parts)
    return b, n, d


def size_argument(s: str) -> str:
    """``--sizes`` entry, checked here so that a typo fails before any worker starts."""
    parse_size(s)
    return s


def gemm_rates(device: str) -> tuple[float, float]:
    """Measured FLOP/s of the two GEMM shapes the metric is made of (float32 distances, float64 Grams)."""
    import torch

    def rate(a, b, reps):
        for _ in range(2):
            torch.bmm(a, b)
        sync(device)
        t = time.perf_counter()
        for _ in range(reps):
            torch.bmm(a, b)
        sync(device)
        return 2 * a.shape[0] * a.shape[1] * a.shape[2] * b.shape[2] * reps / (time.perf_counter() - t)

    x32 = torch.randn(8, 1568, 384, device=device)
    c32 = torch.randn(8, 384, 24, device=device)
    z64 = torch.randn(192, 64, 384, device=device, dtype=torch.float64)
    return rate(x32, c32, 20), rate(z64, z64.transpose(1, 2), 10)


def sync(device: str) -> None:
    if device == "cuda":
        import torch

        torch.cuda.synchronize()


def floor_flops(B, N, d, iters_local, iters_global, k_l=3, k_g=24, G=8):
    """(float32 FLOPs, float64 FLOPs) the metric cannot avoid with Gram-based spectra."""
    P = math.ceil(B / G)

    def kmeans(k, iters):  # k seeding passes + a distance GEMM per update + the final assignment, + centroid sums
        return 2 * B * N * d * k * (2 + iters) + B * N * d * iters

    f32 = kmeans(k_l, iters_local) + kmeans(k_g, iters_global)
    n_l, n_g = N / k_l, G * N / k_g  # typical cluster sizes
    gram = lambda n: min(n, d) ** 2 * max(n, d)  # noqa: E731  (symmetric product: one triangle)
    eig = lambda m: 4 / 3 * m ** 3  # noqa: E731  (tridiagonal reduction)
    clusters_l, clusters_g = B * k_l, P * k_g
    f64 = clusters_l * (gram(n_l) + eig(min(n_l, d))) + clusters_g * (gram(n_g) + eig(min(n_g, d)))
    f64 += N * (gram(B) + eig(min(B, d)))  # per-position M_dim
    return f32, f64


def worker(size: str, backend: str, device: str, repeats: int) -> dict:
    import torch

    import dse_ext

    B, N, d = parse_size(size)
    x = torch.randn(B, N, d, generator=torch.Generator().manual_seed(0)).to(device)
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    times = []
    for _ in range(repeats + 1):  # the first call warms up
        sync(device)
        t = time.perf_counter()
        out = dse_ext.dse(x, backend=backend)
        float(out.dse)
        times.append(time.perf_counter() - t)
    result = {"seconds": statistics.median(times[1:]), "dse": float(out.dse)}
    if device == "cuda":
        result["peak_mb"] = torch.cuda.max_memory_allocated() / 2**20  # the input included
    else:
        result["peak_mb"] = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss0) / 1024
    if backend == "ext":
        xn = torch.nn.functional.normalize(x, dim=-1)
        it_l = torch.ops.dse.kmeans(xn, torch.full((B,), N, dtype=torch.long, device=device), 3, 20, 1e-4, 0, 0)[2]
        xg, counts = dse_ext.metric._group(xn, 8)
        it_g = torch.ops.dse.kmeans(xg, counts.to(device), 24, 20, 1e-4, 0, 0)[2]
        result["iters"] = (float(it_l.float().mean()), float(it_g.float().mean()))
    return result


def run_json(cmd, what):
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"benchmark worker failed for {what}:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def run_child(size, backend, device, repeats):
    cmd = [sys.executable, __file__, "--worker", size, backend, device, str(repeats)]
    return run_json(cmd, f"{size} {backend} {device}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", nargs="+", type=size_argument, default=DEFAULT_SIZES, help="BxNxd sizes")
    parser.add_argument("--repeats", type=int, default=3, help="timed calls per measurement (after one warm-up)")
    parser.add_argument("--devices", nargs="+", default=None, help="cpu and/or cuda (default: all available)")
    parser.add_argument("--no-reference", action="store_true", help="time the compiled backend only")
    parser.add_argument("--worker", nargs=4, help=argparse.SUPPRESS)
    parser.add_argument("--rates-worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.rates_worker:
        print(json.dumps(gemm_rates(args.rates_worker)))
        return
    if args.worker:
        size, backend, device, repeats = args.worker
        print(json.dumps(worker(size, backend, device, int(repeats))))
        return

    import torch

    import dse_ext

    devices = args.devices or (["cpu"] + (["cuda"] if torch.cuda.is_available() and dse_ext.cuda_built() else []))
    print(f"# dse_ext {dse_ext.__version__} benchmark — torch {torch.__version__}, {platform.processor() or platform.machine()}, "
          f"{torch.get_num_threads()} CPU threads, {time.strftime('%Y-%m-%d')}; build {dse_ext.build_info()}")
    print("Defaults: k_l=3, k_g=24, G=8, max_iters=20, tol=1e-4, m_dim=per_position; median of "
          f"{args.repeats} calls after a warm-up.\n")
    for device in devices:
        # In a child process too: this process's BLAS threads would otherwise keep
        # spinning for a while after the measurement and slow the timed children down.
        f32_rate, f64_rate = run_json([sys.executable, __file__, "--rates-worker", device], f"GEMM rates on {device}")
        name = torch.cuda.get_device_name() if device == "cuda" else f"CPU ({os.cpu_count()} cores)"
        print(f"## {name}\nMeasured GEMM rates: float32 {f32_rate / 1e9:.0f} GFLOP/s, float64 {f64_rate / 1e9:.0f} GFLOP/s.\n")
        print("| B×N×d | ext (ms) | reference (ms) | speed-up | ext peak MB | ref peak MB | k-means iters (local/global) | floor (ms) | ext / floor |")
        print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
        for size in args.sizes:
            B, N, d = parse_size(size)
            ext = run_child(size, "ext", device, args.repeats)
            ref = None if args.no_reference else run_child(size, "reference", device, max(1, args.repeats // 2))
            f32, f64 = floor_flops(B, N, d, *ext["iters"])
            floor_s = f32 / f32_rate + f64 / f64_rate
            ref_ms = f"{ref['seconds'] * 1e3:.0f}" if ref else "–"
            speed = f"{ref['seconds'] / ext['seconds']:.1f}×" if ref else "–"
            ref_mb = f"{ref['peak_mb']:.0f}" if ref else "–"
            print(f"| {size} | {ext['seconds'] * 1e3:.1f} | {ref_ms} | {speed} | {ext['peak_mb']:.0f} | {ref_mb} "
                  f"| {ext['iters'][0]:.1f} / {ext['iters'][1]:.1f} | {floor_s * 1e3:.1f} | {ext['seconds'] / floor_s:.1f}× |",
                  flush=True)
            target = TARGETS.get((device, size))
            if target:
                ms, mb = ext["seconds"] * 1e3, ext["peak_mb"]
                verdict = "met" if ms <= target[0] and mb <= target[1] else "MISSED"
                print(f"|  ↳ target ≤ {target[0]:.0f} ms and ≤ {target[1] / 1024:.0f} GB peak: {verdict} "
                      f"({ms:.1f} ms, {mb / 1024:.2f} GB) | | | | | | | | |", flush=True)
            paper = PAPER_SECONDS.get((device, size))
            if paper:
                print(f"|  ↳ vs the paper's released code (≈{paper:.1f} s here) | | | {paper / ext['seconds']:.1f}× | | | | | |",
                      flush=True)
        print()


if __name__ == "__main__":
    main()
