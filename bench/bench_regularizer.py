"""Benchmark dse_ext.DSERegularizer: forward + backward, compiled vs reference, vs a ViT-S/16 step.

Prints a markdown table: the regularizer's forward+backward time (median of repeats after a
warm-up) with the compiled and the reference backend, and the time of one training step
(forward, backward, SGD update) of timm's ``vit_small_patch16_224`` at the same batch size, so
the regularizer's cost can be read as a fraction of a step. Each measurement runs in a fresh
process. The ViT column needs timm (``pip install timm``); without it the column is left empty.

    python bench/bench_regularizer.py
    python bench/bench_regularizer.py --sizes 64x196x384 --repeats 5 --no-vit
    python bench/bench_regularizer.py --device cuda --sizes 256x196x384     # the CUDA target (issue #4)
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time

DEFAULT_SIZES = ["64x196x384", "256x196x384"]
PAPER_SECONDS = {("cpu", "64x196x384"): 1.5}  # the released regularizer, forward + backward, 2 CPU cores (issue #3)


def parse_size(s: str) -> tuple[int, int, int]:
    b, n, d = (int(v) for v in s.lower().split("x"))
    return b, n, d


def sync(device: str) -> None:
    if device == "cuda":
        import torch

        torch.cuda.synchronize()


def time_regularizer(size: str, backend: str, repeats: int, device: str) -> dict:
    import torch

    import dse_ext

    B, N, d = parse_size(size)
    tokens = torch.randn(B, N, d, generator=torch.Generator().manual_seed(0)).to(device).requires_grad_(True)
    reg = dse_ext.DSERegularizer(backend=backend)
    times = []
    for _ in range(repeats + 1):  # the first call warms up
        sync(device)
        t = time.perf_counter()
        reg(tokens).backward()
        sync(device)
        times.append(time.perf_counter() - t)
        tokens.grad = None
    return {"seconds": statistics.median(times[1:])}


def time_vit(size: str, repeats: int, device: str) -> dict:
    import torch

    try:
        import timm
    except ImportError:
        return {"seconds": None}
    B, _, _ = parse_size(size)
    model = timm.create_model("vit_small_patch16_224", num_classes=0).to(device)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    images = torch.randn(B, 3, 224, 224, generator=torch.Generator().manual_seed(0)).to(device)
    times = []
    for _ in range(repeats + 1):
        sync(device)
        t = time.perf_counter()
        loss = model.forward_features(images).pow(2).mean()  # a stand-in SSL loss on the tokens
        loss.backward()
        opt.step()
        opt.zero_grad()
        sync(device)
        times.append(time.perf_counter() - t)
    return {"seconds": statistics.median(times[1:])}


def run_json(args: list[str]) -> dict:
    proc = subprocess.run([sys.executable, __file__, *args], capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"benchmark worker {args} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", nargs="+", default=DEFAULT_SIZES, help="BxNxd sizes")
    parser.add_argument("--repeats", type=int, default=3, help="timed calls per measurement (after one warm-up)")
    parser.add_argument("--no-reference", action="store_true", help="time the compiled backend only")
    parser.add_argument("--no-vit", action="store_true", help="skip the ViT-S/16 training step")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--worker", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        kind, size, repeats, device = args.worker
        result = (time_vit(size, int(repeats), device) if kind == "vit"
                  else time_regularizer(size, kind, int(repeats), device))
        print(json.dumps(result))
        return

    import torch

    import dse_ext

    print(f"# dse_ext {dse_ext.__version__} regularizer benchmark on {args.device} — torch {torch.__version__}, "
          f"{torch.get_num_threads()} CPU threads, {time.strftime('%Y-%m-%d')}; build {dse_ext.build_info()}")
    print("DSERegularizer defaults (whole batch as one group, pooled M_dim); forward + backward, median of "
          f"{args.repeats} calls after a warm-up; ViT-S/16 step = forward, backward and SGD update.\n")
    print("| B×N×d | ext fwd+bwd (ms) | reference fwd+bwd (ms) | speed-up | ViT-S/16 step (s) | ext / step |")
    print("|---|---:|---:|---:|---:|---:|")
    for size in args.sizes:
        ext = run_json(["--worker", "ext", size, str(args.repeats), args.device])["seconds"]
        ref = None if args.no_reference else run_json(["--worker", "reference", size, "1", args.device])["seconds"]
        vit = None if args.no_vit else run_json(["--worker", "vit", size, "1", args.device])["seconds"]
        ref_s = f"{ref * 1e3:.0f}" if ref else "–"
        speed = f"{ref / ext:.1f}×" if ref else "–"
        vit_s = f"{vit:.2f}" if vit else "–"
        share = f"{100 * ext / vit:.1f}%" if vit else "–"
        print(f"| {size} | {ext * 1e3:.0f} | {ref_s} | {speed} | {vit_s} | {share} |", flush=True)
        paper = PAPER_SECONDS.get((args.device, size))
        if paper:
            print(f"|  ↳ vs the paper's released regularizer (≈{paper:.1f} s here) | | | {paper / ext:.1f}× | | |",
                  flush=True)


if __name__ == "__main__":
    main()
